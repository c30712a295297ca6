"""``usertasks_import_user_tasks``: legacy django-user-tasks tables (created here with the schema
of its migrations) imported into the usertasks tables, idempotently."""

import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, models
from django.utils import timezone

from user_tasks.models import UserTaskStatus

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA = {
    "sqlite": [
        """CREATE TABLE "user_tasks_usertaskstatus" (
            "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "created" datetime NOT NULL,
            "modified" datetime NOT NULL, "uuid" char(32) NOT NULL UNIQUE,
            "task_id" varchar(128) NOT NULL UNIQUE, "is_container" bool NOT NULL,
            "task_class" varchar(128) NOT NULL, "name" varchar(255) NOT NULL, "state" varchar(128) NOT NULL,
            "completed_steps" smallint unsigned NOT NULL, "total_steps" smallint unsigned NOT NULL,
            "attempts" smallint unsigned NOT NULL,
            "parent_id" integer NULL REFERENCES "user_tasks_usertaskstatus" ("id"),
            "user_id" integer NOT NULL REFERENCES "auth_user" ("id"))""",
        """CREATE TABLE "user_tasks_usertaskartifact" (
            "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "created" datetime NOT NULL,
            "modified" datetime NOT NULL, "uuid" char(32) NOT NULL UNIQUE, "name" varchar(255) NOT NULL,
            "file" varchar(100) NULL, "url" text NOT NULL, "text" text NOT NULL,
            "status_id" integer NOT NULL REFERENCES "user_tasks_usertaskstatus" ("id"))""",
    ],
    "postgresql": [
        """CREATE TABLE "user_tasks_usertaskstatus" (
            "id" serial NOT NULL PRIMARY KEY, "created" timestamp with time zone NOT NULL,
            "modified" timestamp with time zone NOT NULL, "uuid" uuid NOT NULL UNIQUE,
            "task_id" varchar(128) NOT NULL UNIQUE, "is_container" boolean NOT NULL,
            "task_class" varchar(128) NOT NULL, "name" varchar(255) NOT NULL, "state" varchar(128) NOT NULL,
            "completed_steps" smallint NOT NULL CHECK ("completed_steps" >= 0),
            "total_steps" smallint NOT NULL CHECK ("total_steps" >= 0),
            "attempts" smallint NOT NULL CHECK ("attempts" >= 0),
            "parent_id" integer NULL REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED,
            "user_id" integer NOT NULL REFERENCES "auth_user" ("id") DEFERRABLE INITIALLY DEFERRED)""",
        """CREATE TABLE "user_tasks_usertaskartifact" (
            "id" serial NOT NULL PRIMARY KEY, "created" timestamp with time zone NOT NULL,
            "modified" timestamp with time zone NOT NULL, "uuid" uuid NOT NULL UNIQUE,
            "name" varchar(255) NOT NULL, "file" varchar(100) NULL, "url" text NOT NULL, "text" text NOT NULL,
            "status_id" integer NOT NULL REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED)""",
    ],
    "mysql": [
        """CREATE TABLE `user_tasks_usertaskstatus` (
            `id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY, `created` datetime(6) NOT NULL,
            `modified` datetime(6) NOT NULL, `uuid` char(32) NOT NULL UNIQUE,
            `task_id` varchar(128) NOT NULL UNIQUE, `is_container` bool NOT NULL,
            `task_class` varchar(128) NOT NULL, `name` varchar(255) NOT NULL, `state` varchar(128) NOT NULL,
            `completed_steps` smallint UNSIGNED NOT NULL, `total_steps` smallint UNSIGNED NOT NULL,
            `attempts` smallint UNSIGNED NOT NULL, `parent_id` integer NULL, `user_id` integer NOT NULL,
            CONSTRAINT `legacy_status_parent` FOREIGN KEY (`parent_id`) REFERENCES `user_tasks_usertaskstatus` (`id`),
            CONSTRAINT `legacy_status_user` FOREIGN KEY (`user_id`) REFERENCES `auth_user` (`id`))""",
        """CREATE TABLE `user_tasks_usertaskartifact` (
            `id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY, `created` datetime(6) NOT NULL,
            `modified` datetime(6) NOT NULL, `uuid` char(32) NOT NULL UNIQUE, `name` varchar(255) NOT NULL,
            `file` varchar(100) NULL, `url` longtext NOT NULL, `text` longtext NOT NULL, `status_id` integer NOT NULL,
            CONSTRAINT `legacy_artifact_status` FOREIGN KEY (`status_id`) REFERENCES `user_tasks_usertaskstatus` (`id`))""",
    ],
}


#: The tables of those models as a migration made them while django-user-tasks was installed.
CLIENT_SCHEMA = {
    "sqlite": [
        """CREATE TABLE "tests_certificate" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
            "task_id" integer NOT NULL REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED)""",
        """CREATE TABLE "tests_report" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
            "task_id" integer NULL UNIQUE REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED)""",
    ],
    "postgresql": [
        """CREATE TABLE "tests_certificate" ("id" serial NOT NULL PRIMARY KEY,
            "task_id" integer NOT NULL REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED)""",
        """CREATE TABLE "tests_report" ("id" serial NOT NULL PRIMARY KEY,
            "task_id" integer NULL UNIQUE REFERENCES "user_tasks_usertaskstatus" ("id") DEFERRABLE INITIALLY DEFERRED)""",
    ],
    "mysql": [
        """CREATE TABLE `tests_certificate` (`id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
            `task_id` integer NOT NULL, CONSTRAINT `legacy_certificate_task` FOREIGN KEY (`task_id`)
            REFERENCES `user_tasks_usertaskstatus` (`id`))""",
        """CREATE TABLE `tests_report` (`id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
            `task_id` integer NULL UNIQUE, CONSTRAINT `legacy_report_task` FOREIGN KEY (`task_id`)
            REFERENCES `user_tasks_usertaskstatus` (`id`))""",
    ],
}


def _client_models():
    """A project's models with a foreign key and a one-to-one field to django-user-tasks'
    status, as Open edX has.  Registered for one test only (no other test has their tables)."""

    class Certificate(models.Model):
        task = models.ForeignKey("user_tasks.UserTaskStatus", on_delete=models.CASCADE, related_name="+")

        class Meta:
            app_label = "tests"

    class Report(models.Model):
        task = models.OneToOneField(
            "user_tasks.UserTaskStatus", null=True, on_delete=models.SET_NULL, related_name="+"
        )

        class Meta:
            app_label = "tests"

    return Certificate, Report


@pytest.fixture
def client_tables(legacy_tables):
    """The project's models, with their tables in their django-user-tasks shape."""
    from django.apps import apps

    Certificate, Report = _client_models()
    with connection.cursor() as cursor:
        for sql in CLIENT_SCHEMA[connection.vendor]:
            cursor.execute(sql)
    try:
        yield Certificate, Report
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE " + connection.ops.quote_name("tests_report"))
            cursor.execute("DROP TABLE " + connection.ops.quote_name("tests_certificate"))
        for model in (Certificate, Report):
            del apps.all_models["tests"][model._meta.model_name]
        apps.clear_cache()


@pytest.fixture
def legacy_tables(transactional_db):
    with connection.cursor() as cursor:
        for sql in SCHEMA[connection.vendor]:
            cursor.execute(sql)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE " + connection.ops.quote_name("user_tasks_usertaskartifact"))
        cursor.execute("DROP TABLE " + connection.ops.quote_name("user_tasks_usertaskstatus"))


def _sql(text):
    """``text`` with its double-quoted names quoted for this database (MySQL: backquotes)."""
    return text.replace('"', "`") if connection.vendor == "mysql" else text


def _uuid_param(value):
    return value.hex if connection.vendor in ("sqlite", "mysql") else str(value)


def _dt(value):
    return connection.ops.adapt_datetimefield_value(value)


def add_status(user, *, state, name, parent=None, container=False, steps=(1, 1), age_days=3, task_class="app.tasks.export"):
    uid = uuid.uuid4()
    created = timezone.now() - timedelta(days=age_days)
    with connection.cursor() as cursor:
        cursor.execute(
            _sql('INSERT INTO "user_tasks_usertaskstatus" ("created", "modified", "uuid", "task_id", "is_container", '
                 '"task_class", "name", "state", "completed_steps", "total_steps", "attempts", "parent_id", "user_id") '
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"),
            [_dt(created), _dt(created + timedelta(hours=1)), _uuid_param(uid), str(uuid.uuid4()), container,
             task_class, name, state, steps[0], steps[1], 1, parent, user.pk],
        )
        cursor.execute(_sql('SELECT "id" FROM "user_tasks_usertaskstatus" WHERE "uuid" = %s'), [_uuid_param(uid)])
        return cursor.fetchone()[0], uid


def add_artifact(status_id, *, name="Output", file=None, url="", text=""):
    uid = uuid.uuid4()
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _sql('INSERT INTO "user_tasks_usertaskartifact" ("created", "modified", "uuid", "name", "file", "url", '
                 '"text", "status_id") VALUES (%s, %s, %s, %s, %s, %s, %s, %s)'),
            [_dt(now), _dt(now), _uuid_param(uid), name, file, url, text, status_id],
        )
    return uid


def run():
    out = StringIO()
    call_command("usertasks_import_user_tasks", stdout=out)
    return out.getvalue()


def test_import_and_import_again(legacy_tables, user, other_user):
    done_id, done_uuid = add_status(user, state="Succeeded", name="Export", steps=(5, 5))
    failed_id, failed_uuid = add_status(other_user, state="Failed", name="Import", steps=(1, 3))
    group_id, group_uuid = add_status(user, state="In Progress", name="Batch", container=True, steps=(1, 2),
                                      task_class="celery.group")
    add_status(user, state="Succeeded", name="Part 1", parent=group_id)
    _, custom_uuid = add_status(user, state="Sending emails", name="Part 2", parent=group_id, steps=(0, 1))
    art_uuid = add_artifact(done_id, file="user_tasks/2024/01/02/out.csv")
    add_artifact(done_id, name="Link", url="https://example.com/x")
    add_artifact(failed_id, name="Error", text="Boom")

    assert run().startswith("Imported 5 tasks (0 already there) and 3 artifacts")

    done = UserTaskStatus.objects.get(uuid=done_uuid)
    assert (done.name, done.state, done.completed_steps, done.total_steps) == ("Export", "Succeeded", 5, 5)
    assert done.user == user and done.backend == "celery" and done.finished is not None
    assert done.created < timezone.now() - timedelta(days=2)
    assert done.modified < timezone.now() - timedelta(days=2)
    art = done.artifacts.get(uuid=art_uuid)
    assert art.file.name == "user_tasks/2024/01/02/out.csv"
    assert done.artifacts.get(name="Link").url == "https://example.com/x"
    assert done.events.filter(kind="note").exists()
    failed = UserTaskStatus.objects.get(uuid=failed_uuid)
    assert failed.state == "Failed" and failed.error == "Boom" and failed.user == other_user
    group = UserTaskStatus.objects.get(uuid=group_uuid)
    assert group.is_container and group.children_total == 2 and group.children_succeeded == 1
    part2 = UserTaskStatus.objects.get(uuid=custom_uuid)
    assert part2.parent == group
    # Imported rows keep their custom state (In Progress to usertasks).
    assert part2.state == "Sending emails" and part2.state_text == "Sending emails"
    assert part2.effective_state == "In Progress" and part2.is_active

    # Again: nothing new.  Then one new legacy row: only that one.
    assert run().startswith("Imported 0 tasks (5 already there) and 0 artifacts (3 already there)")
    add_status(user, state="Pending", name="Late")
    assert run().startswith("Imported 1 tasks (5 already there)")
    assert UserTaskStatus.objects.count() == 6


def test_no_legacy_tables(transactional_db):
    with pytest.raises(CommandError, match="nothing to import"):
        run()


LEGACY_MIGRATIONS = ["0001_initial", "0002_artifact_file_storage", "0003_url_max_length", "0004_url_textfield",
                     "0005_mariadb_uuid_conversion"]


def test_migrations_carry_the_names_and_order_of_django_user_tasks():
    """A project migration that depends on ``("user_tasks", "0004_url_textfield")`` resolves."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    plan = loader.graph.forwards_plan(("user_tasks", LEGACY_MIGRATIONS[-1]))
    # 0001_initial is there under the name of the migration that replaces it (as a squashed
    # migration does): dependencies on it are redirected there.
    stand_in = ("user_tasks", "0001_after_django_user_tasks")
    assert loader.replacements[stand_in].replaces == [("user_tasks", "0001_initial")]
    assert [name for app, name in plan if app == "user_tasks"] == [stand_in[1], *LEGACY_MIGRATIONS[1:]]
    assert ("usertasks", "0001_initial") in plan  # usertasks' tables come first


MIGRATE_AFTER = """
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
for app in ("contenttypes", "auth", "usertasks"):
    call_command("migrate", app, verbosity=0)
recorder = MigrationRecorder(connection)
for name in {names!r}:
    recorder.record_applied("user_tasks", name)
call_command("migrate", verbosity=0)
executor = MigrationExecutor(connection)
executor.loader.check_consistent_history(connection)
assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
print("ok")
"""


@pytest.mark.parametrize("history", ["django-user-tasks", "earlier usertasks", "none"])
def test_migrate_after_django_user_tasks_or_an_earlier_release(tmp_path, history):
    """``manage.py migrate`` on a database that ran django-user-tasks' migrations (same app label
    and names), this app's earlier ``0001_proxies``, or nothing: clean, nothing left to apply."""
    import os
    import subprocess
    import sys

    from ..helpers import ROOT

    names = {"django-user-tasks": LEGACY_MIGRATIONS, "earlier usertasks": ["0001_proxies"], "none": []}[history]
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=ROOT + os.pathsep + ROOT + "/compat")
    env.pop("DATABASE_URL", None)  # a scratch SQLite database
    env["USERTASKS_TEST_DB_NAME"] = str(tmp_path / "db.sqlite3")
    done = subprocess.run([sys.executable, "-c", MIGRATE_AFTER.format(names=names)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_foreign_keys_of_the_project_are_repointed(client_tables, user):
    """Rows of the project's models keep pointing at the same tasks, and rows for tasks created
    after the switch can be written (the constraint referenced the old table)."""
    from user_tasks.importer import legacy_foreign_keys

    Certificate, Report = client_tables
    before = UserTaskStatus.objects.create(user=user, name="usertasks row", task_class="x")  # ids differ
    first_id, first_uuid = add_status(user, state="Succeeded", name="First")
    second_id, second_uuid = add_status(user, state="Failed", name="Second")
    with connection.cursor() as cursor:
        cursor.execute(_sql('INSERT INTO "tests_certificate" ("task_id") VALUES (%s), (%s)'), [first_id, second_id])
        cursor.execute(_sql('INSERT INTO "tests_report" ("task_id") VALUES (%s)'), [second_id])
    assert {f.name for _, f, _ in legacy_foreign_keys()} == {"task"} and len(legacy_foreign_keys()) == 2

    out = run()
    assert "Repointed tests.Certificate.task, tests.Report.task to the usertasks table." in out
    assert legacy_foreign_keys() == []
    assert sorted(c.task.uuid for c in Certificate.objects.all()) == sorted([first_uuid, second_uuid])
    assert Report.objects.get().task.uuid == second_uuid
    assert before.pk not in {c.task_id for c in Certificate.objects.all()}
    # A task created after the switch.
    new = UserTaskStatus.objects.create(user=user, name="after", task_class="x")
    Certificate.objects.create(task=new)
    Report.objects.create(task=new)
    assert Certificate.objects.filter(task__name="after").count() == 1
    # The constraint now references the usertasks table: a missing task is refused.
    with pytest.raises(IntegrityError):
        Certificate.objects.create(task_id=new.pk + 10_000)
    # Again: nothing to repoint, nothing changes.
    assert "Repointed" not in run()
    assert sorted(c.task.uuid for c in Certificate.objects.filter(task__name__in=["First", "Second"])) == sorted(
        [first_uuid, second_uuid]
    )
