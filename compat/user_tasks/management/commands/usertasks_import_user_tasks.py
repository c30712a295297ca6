"""``manage.py usertasks_import_user_tasks``: copy django-user-tasks rows into usertasks."""

from django.core.management.base import BaseCommand, CommandError

from user_tasks.importer import ARTIFACT_TABLE, STATUS_TABLE, import_legacy


class Command(BaseCommand):
    help = (
        "Import the task statuses and artifacts of an existing django-user-tasks installation "
        f"({STATUS_TABLE}, {ARTIFACT_TABLE}) into the usertasks tables. Safe to run again: rows "
        "already imported are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--status-table", default=STATUS_TABLE)
        parser.add_argument("--artifact-table", default=ARTIFACT_TABLE)
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--database", default=None)

    def handle(self, *args, **options):
        try:
            report = import_legacy(
                status_table=options["status_table"],
                artifact_table=options["artifact_table"],
                batch_size=options["batch_size"],
                using=options["database"],
            )
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(report))
