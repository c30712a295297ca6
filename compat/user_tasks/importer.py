"""Import the tables of an existing django-user-tasks installation into the usertasks tables.

django-user-tasks keeps its rows in ``user_tasks_usertaskstatus`` and
``user_tasks_usertaskartifact`` (app label ``user_tasks``, default table names).  Swapping the
distribution leaves those tables in place; :func:`import_legacy` copies them into the usertasks
tables, keeping uuids (so API links stay valid), task ids, parents, names, states, steps,
attempts, dates and artifacts (file names are kept: the files stay where they are in the
artifact storage).  Running it again imports only what is new: a row whose uuid or task id is
already there is skipped.

Foreign keys of the project's own models to ``user_tasks.UserTaskStatus`` that were created while
django-user-tasks was installed still point, in the database, at its table.  The import repoints
them (:func:`repoint_foreign_keys`): each value becomes the id of the imported row, and the
constraint references the usertasks table, so rows for tasks created after the switch can be
written.
"""

import datetime
import logging
import uuid as uuid_lib
from dataclasses import dataclass

from django.db import connections, router, transaction
from django.db.models import Count, Q

from usertasks.models import EventKind, UserTaskArtifact, UserTaskEvent, UserTaskStatus
from usertasks.states import FINAL_STATES, State

logger = logging.getLogger("user_tasks")

STATUS_TABLE = "user_tasks_usertaskstatus"
ARTIFACT_TABLE = "user_tasks_usertaskartifact"

STATUS_COLUMNS = (
    "id",
    "uuid",
    "task_id",
    "parent_id",
    "is_container",
    "task_class",
    "name",
    "state",
    "completed_steps",
    "total_steps",
    "attempts",
    "user_id",
    "created",
    "modified",
)
ARTIFACT_COLUMNS = ("id", "uuid", "status_id", "name", "file", "url", "text", "created", "modified")


@dataclass
class Report:
    tasks: int = 0
    tasks_skipped: int = 0
    artifacts: int = 0
    artifacts_skipped: int = 0
    foreign_keys: list[str] | None = None

    def __str__(self):
        text = (
            f"Imported {self.tasks} tasks ({self.tasks_skipped} already there) and {self.artifacts} "
            f"artifacts ({self.artifacts_skipped} already there)."
        )
        if self.foreign_keys:
            text += f" Repointed {', '.join(self.foreign_keys)} to the usertasks table."
        return text


def _uuid(value):
    return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))


def _rows(cursor, table, columns, qn):
    cursor.execute(f"SELECT {', '.join(qn(c) for c in columns)} FROM {qn(table)} ORDER BY {qn('id')}")
    while True:
        chunk = cursor.fetchmany(1000)
        if not chunk:
            return
        for values in chunk:
            yield dict(zip(columns, values))


def _datetime(connection, value):
    if isinstance(value, str):
        from django.utils.dateparse import parse_datetime

        value = parse_datetime(value)
    if value is not None and value.tzinfo is None:
        from django.conf import settings
        from django.utils import timezone

        if settings.USE_TZ:
            value = timezone.make_aware(value, datetime.timezone.utc)
    return value


def import_legacy(status_table=STATUS_TABLE, artifact_table=ARTIFACT_TABLE, batch_size=500, using=None):
    """Copy the django-user-tasks rows into the usertasks tables; returns a :class:`Report`."""
    db = using or router.db_for_write(UserTaskStatus)
    connection = connections[db]
    qn = connection.ops.quote_name
    tables = set(connection.introspection.table_names())
    missing = [t for t in (status_table, artifact_table) if t not in tables]
    if missing:
        raise LookupError(f"No table {', '.join(missing)} in database {db!r}: nothing to import.")
    report = Report()

    # uuid and task id of what is there already: the import is idempotent.
    known_uuid = dict(UserTaskStatus.objects.using(db).values_list("uuid", "pk"))
    known_task = dict(UserTaskStatus.objects.using(db).values_list("task_id", "pk"))
    legacy_to_new = {}
    parents = {}
    new_ids = []

    with connection.cursor() as cursor:
        batch = []
        for legacy in _rows(cursor, status_table, STATUS_COLUMNS, qn):
            uid = _uuid(legacy["uuid"])
            existing = known_uuid.get(uid) or known_task.get(legacy["task_id"])
            if legacy["parent_id"] is not None:
                parents[legacy["id"]] = legacy["parent_id"]
            if existing:
                legacy_to_new[legacy["id"]] = existing
                report.tasks_skipped += 1
                continue
            batch.append((legacy["id"], _status(connection, legacy, uid)))
            if len(batch) >= batch_size:
                new_ids += _insert_statuses(batch, legacy_to_new, db)
                batch = []
        if batch:
            new_ids += _insert_statuses(batch, legacy_to_new, db)
        report.tasks = len(new_ids)

        # Parents, now that every row has its new primary key.
        with transaction.atomic(using=db):
            for legacy_id, legacy_parent in parents.items():
                child, parent = legacy_to_new.get(legacy_id), legacy_to_new.get(legacy_parent)
                if child is not None and child in new_ids and parent:
                    UserTaskStatus.objects.using(db).filter(pk=child).update(parent_id=parent)
            _container_counters(db, new_ids)

        known_art = set(UserTaskArtifact.objects.using(db).values_list("uuid", flat=True))
        artifacts: list[UserTaskArtifact] = []
        errors = {}
        for legacy in _rows(cursor, artifact_table, ARTIFACT_COLUMNS, qn):
            uid = _uuid(legacy["uuid"])
            status_id = legacy_to_new.get(legacy["status_id"])
            if uid in known_art or status_id is None:
                report.artifacts_skipped += 1
                continue
            if legacy["name"] == "Error" and legacy["text"]:
                errors[status_id] = legacy["text"]
            artifacts.append(
                UserTaskArtifact(
                    uuid=uid,
                    status_id=status_id,
                    name=legacy["name"] or "",
                    file=legacy["file"] or "",
                    url=legacy["url"] or "",
                    text=legacy["text"] or "",
                    created=_datetime(connection, legacy["created"]),
                )
            )
            if len(artifacts) >= batch_size:
                report.artifacts += _insert_artifacts(artifacts, db)
                artifacts = []
        if artifacts:
            report.artifacts += _insert_artifacts(artifacts, db)
        # A failed task's message is the text of its "Error" artifact.
        with transaction.atomic(using=db):
            for status_id, text in errors.items():
                UserTaskStatus.objects.using(db).filter(pk=status_id, state=State.FAILED, error="").update(
                    error=text[:4000]
                )
    report.foreign_keys = repoint_foreign_keys(legacy_to_new, status_table=status_table, using=db)
    logger.info("user_tasks: %s", report)
    return report


def legacy_foreign_keys(status_table=STATUS_TABLE, using=None):
    """``(model, field, constraint name)`` of the project's foreign keys to the task statuses
    whose database constraint still references ``status_table``."""
    from django.apps import apps

    db = using or router.db_for_write(UserTaskStatus)
    connection = connections[db]
    found = []
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        for model in apps.get_models():
            opts = model._meta
            if opts.app_label in ("usertasks", "user_tasks") or not opts.managed or opts.proxy:
                continue
            if opts.db_table not in tables:
                continue
            fields = [
                f
                for f in opts.local_fields
                if f.is_relation
                and (f.many_to_one or f.one_to_one)
                and f.related_model is not None
                and f.related_model._meta.concrete_model is UserTaskStatus
            ]
            if not fields:
                continue
            constraints = connection.introspection.get_constraints(cursor, opts.db_table)
            for field in fields:
                for name, info in constraints.items():
                    target = info.get("foreign_key")
                    if target and target[0] == status_table and info["columns"] == [field.column]:
                        found.append((model, field, name))
    return found


def repoint_foreign_keys(legacy_to_new, status_table=STATUS_TABLE, using=None):
    """Make the foreign keys of :func:`legacy_foreign_keys` reference the usertasks table: each
    value becomes the new id of the row it pointed to (``legacy_to_new``), the column gets the
    type of usertasks' primary key, and the constraint references usertasks' table.  One
    transaction per field.  Returns the fields repointed, as ``"app_label.Model.field"``."""
    from django.db import models

    db = using or router.db_for_write(UserTaskStatus)
    connection = connections[db]
    done = []
    for model, field, constraint in legacy_foreign_keys(status_table, using=db):
        table, column = model._meta.db_table, field.column
        qn = connection.ops.quote_name
        # The column as it is: an integer without a constraint (the old one is dropped first,
        # except on SQLite, where altering the field rebuilds the table without it).
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, table).values()
        indexed = any(
            c["columns"] == [column] and c.get("index") and not c.get("foreign_key") and not c.get("primary_key")
            for c in constraints
        )
        old = models.IntegerField(null=field.null, unique=field.unique, db_index=indexed and not field.unique)
        old.set_attributes_from_name(field.name)
        old.attname, old.column, old.model = field.attname, column, model
        with connection.schema_editor(atomic=True) as editor:
            if connection.vendor != "sqlite":
                editor.execute(editor._delete_fk_sql(model, constraint))  # type: ignore[attr-defined]
            # Old ids -> new ids, through negative values so that no mapping overwrites another.
            editor.execute(f"UPDATE {qn(table)} SET {qn(column)} = -{qn(column)} WHERE {qn(column)} > 0")
            pairs = list(legacy_to_new.items())
            for start in range(0, len(pairs), 500):
                chunk = pairs[start : start + 500]
                cases = " ".join("WHEN %s THEN %s" for _ in chunk)
                params = [v for legacy_id, new_id in chunk for v in (-legacy_id, new_id)]
                params += [-legacy_id for legacy_id, _ in chunk]
                marks = ", ".join(["%s"] * len(chunk))
                editor.execute(
                    f"UPDATE {qn(table)} SET {qn(column)} = CASE {qn(column)} {cases} END "
                    f"WHERE {qn(column)} IN ({marks})",
                    params,
                )
            editor.alter_field(model, old, field)
        done.append(f"{model._meta.label}.{field.name}")
        logger.info("user_tasks: %s.%s now references %s", model._meta.label, field.name, UserTaskStatus._meta.db_table)
    return done


def _status(connection, legacy, uid):
    state = legacy["state"]
    options = {"notify": False, "imported_from": "django-user-tasks", "legacy_id": legacy["id"]}
    message = ""
    if state not in State.values:  # a custom state set with set_state(): kept as it is
        message = state[:1000]
    modified = _datetime(connection, legacy["modified"])
    created = _datetime(connection, legacy["created"])
    return UserTaskStatus(
        uuid=uid,
        task_id=legacy["task_id"],
        is_container=bool(legacy["is_container"]),
        task_class=legacy["task_class"] or "",
        name=legacy["name"] or "",
        state=state,
        message=message,
        completed_steps=legacy["completed_steps"] or 0,
        total_steps=legacy["total_steps"] or 0,
        attempts=legacy["attempts"] or 0,
        user_id=legacy["user_id"],
        created=created,
        modified=modified,
        started=created if state != State.PENDING else None,
        finished=modified if state in FINAL_STATES else None,
        backend="celery",
        options=options,
    )


def _insert_statuses(batch, legacy_to_new, db):
    legacy_modified = [obj.modified for _, obj in batch]
    with transaction.atomic(using=db):
        objs = UserTaskStatus.objects.using(db).bulk_create([obj for _, obj in batch])
        if any(o.pk is None for o in objs):  # backends that return no ids
            by_uuid = dict(
                UserTaskStatus.objects.using(db).filter(uuid__in=[o.uuid for o in objs]).values_list("uuid", "pk")
            )
            for o in objs:
                o.pk = by_uuid[o.uuid]
        # bulk_create stamps ``modified`` with now (auto_now): put the legacy value back.
        rows = UserTaskStatus.objects.using(db)
        for (legacy_id, _), obj, modified in zip(batch, objs, legacy_modified):
            legacy_to_new[legacy_id] = obj.pk
            obj.modified = modified
            rows.filter(pk=obj.pk).update(modified=modified)
        UserTaskEvent.objects.using(db).bulk_create(
            [
                UserTaskEvent(status_id=o.pk, kind=EventKind.NOTE, detail="Imported from django-user-tasks.")
                for o in objs
            ]
        )
    return [o.pk for o in objs]


def _insert_artifacts(batch, db):
    with transaction.atomic(using=db):
        UserTaskArtifact.objects.using(db).bulk_create(batch)
    return len(batch)


def _container_counters(db, new_ids):
    counts = (
        UserTaskStatus.objects.using(db)
        .filter(pk__in=new_ids, is_container=True)
        .annotate(
            n=Count("children"),
            ok=Count("children", filter=Q(children__state=State.SUCCEEDED)),
            ko=Count("children", filter=Q(children__state=State.FAILED)),
            cx=Count("children", filter=Q(children__state=State.CANCELED)),
        )
        .values_list("pk", "n", "ok", "ko", "cx")
    )
    for pk, n, ok, ko, cx in counts:
        UserTaskStatus.objects.using(db).filter(pk=pk).update(
            children_total=n, children_succeeded=ok, children_failed=ko, children_canceled=cx
        )
