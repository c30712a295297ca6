"""The demo's tasks: realistic shapes of work a user starts from a page."""

import csv
import io
import random
import time

from django.core.files.base import ContentFile

from usertasks import user_task


@user_task(name="Export sales report ({rows} rows)", max_retries=0)
def export_report(task, rows=3000, chunk=50, delay=0.15):
    """Builds a CSV chunk by chunk (reporting progress), then attaches it as a file."""
    chunks = max(1, (rows + chunk - 1) // chunk)
    task.set_total_steps(chunks)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["order", "region", "product", "quantity", "amount"])
    rng = random.Random(rows)
    regions = ["North", "South", "East", "West"]
    products = ["Widget", "Gadget", "Gizmo", "Doohickey"]
    for c in range(chunks):
        for i in range(c * chunk, min(rows, (c + 1) * chunk)):
            qty = rng.randint(1, 20)
            writer.writerow([10000 + i, rng.choice(regions), rng.choice(products), qty, f"{qty * 9.95:.2f}"])
        time.sleep(delay)  # stands in for a slow query
        task.step(message=f"Exported {min(rows, (c + 1) * chunk)} of {rows} rows")
    task.add_artifact("Sales report (CSV)", file=ContentFile(out.getvalue().encode(), name="sales-report.csv"))


@user_task(name="Publish course summary", max_retries=0)
def publish_summary(task, delay=0.4):
    """Produces a link and a text: typical of tasks whose output lives elsewhere."""
    steps = ["Collecting grades", "Computing statistics", "Rendering summary", "Uploading"]
    task.set_total_steps(len(steps))
    for text in steps:
        time.sleep(delay)
        task.step(message=text)
    task.add_artifact("Published summary", url="https://example.com/summaries/demo-course")
    task.add_artifact("Statistics", text="Learners: 128\nCompleted: 97 (75.8 %)\nAverage grade: 0.81")


@user_task(name="Import enrolments from CSV", max_retries=1, min_backoff=1000, max_backoff=2000)
def import_enrolments(task):
    """Fails on every attempt (the file is bad), so it ends Failed after one retry."""
    task.set_total_steps(3)
    task.step(message="Reading the file")
    time.sleep(0.5)
    task.step(message="Checking the rows")
    raise ValueError("Row 17: 'not-an-email' is not an email address.")


# One task declared with Django's own task API (``django.tasks``, or the ``django-tasks``
# backport before Django 6.0), run by usertasks' backend (``TASKS`` in demo/settings.py).
try:
    from django.tasks import task
except ImportError:  # Django < 6.0
    from django_tasks import task


@task(takes_context=True)
def count_words(context, chapters=40, delay=0.1):
    """Count the words of a course's chapters; returns the totals (stored as JSON)."""
    from usertasks import current_task

    progress = current_task()  # usertasks' side of the run: progress, cancel, artifacts
    progress.set_total_steps(chapters)
    words = 0
    for chapter in range(1, chapters + 1):
        time.sleep(delay)
        words += random.randint(800, 2400)
        progress.step(message=f"Chapter {chapter} of {chapters} (attempt {context.attempt})")
    progress.add_artifact("Summary", text=f"{words} words in {chapters} chapters.")
    return {"chapters": chapters, "words": words}
