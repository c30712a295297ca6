"""``manage.py usertasks_reap``: fail tasks whose worker died or whose message was lost."""

from django.core.management.base import BaseCommand

from usertasks.reaper import reap


class Command(BaseCommand):
    help = (
        "Fail tasks In Progress whose worker died and Pending tasks whose message is no longer in "
        "the broker; release their dedupe keys and abort flags.  Run it every few minutes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing.")

    def handle(self, *args, dry_run=False, **options):
        result = reap(dry_run=dry_run)
        self.stdout.write(("Would reap: " if dry_run else "Reaped: ") + str(result))
