"""``manage.py usertasks_purge``: delete finished tasks older than ``USERTASKS["MAX_AGE"]``,
with their subtasks, events, artifacts and stored files."""

from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from usertasks.purge import parse_age, purge


class Command(BaseCommand):
    help = (
        "Delete tasks that finished longer ago than USERTASKS['MAX_AGE'] (or --older-than), with "
        "their subtasks, artifacts and stored files, in batches.  Active tasks are never deleted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h, 90m (default: MAX_AGE).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, help="Tasks per transaction (default: PURGE_BATCH_SIZE).")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")

    def handle(self, *args, older_than=None, dry_run=False, batch_size=None, no_progress=False, **options):
        try:
            age = None if older_than is None else parse_age(older_than)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        bar = None if no_progress or options.get("verbosity", 1) < 1 else ProgressBar(self.stderr)
        result = purge(age, dry_run=dry_run, batch_size=batch_size, progress=bar)
        if bar:
            bar.close()
        self.stdout.write(str(result)[0].upper() + str(result)[1:] + ".")


class ProgressBar:
    """``[#########           ] 45% 450/1000`` redrawn in place on a terminal, one line per
    tenth otherwise."""

    def __init__(self, stream, width=30):
        self.stream = stream
        self.width = width
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_tenth = -1
        self.drawn = False

    def __call__(self, done, total):
        fraction = done / total if total else 1.0
        if not self.tty:
            tenth = int(fraction * 10)
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
        filled = int(fraction * self.width)
        line = f"[{'#' * filled}{' ' * (self.width - filled)}] {fraction:4.0%} {done}/{total}"
        self._write(("\r" + line) if self.tty else line + "\n")
        self.drawn = True

    def close(self):
        if self.tty and self.drawn:
            self._write("\n")

    def _write(self, text):
        if isinstance(self.stream, OutputWrapper):
            self.stream.write(text, ending="")
        else:
            self.stream.write(text)
        self.stream.flush()
