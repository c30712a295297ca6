from django.contrib.auth.decorators import login_required
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect, render

import usertasks

from . import tasks

DEMO_TASKS = {
    "export": (tasks.export_report, "Export a sales report", "Builds a CSV with progress, then offers it as a download."),
    "publish": (tasks.publish_summary, "Publish a course summary", "Produces a link and a text result."),
    "import": (tasks.import_enrolments, "Import enrolments", "Fails on a bad row, is retried once, then fails."),
    "count": (tasks.count_words, "Count words (Django task API)", "Declared with @task, started with enqueue()."),
}


@login_required
def home(request):
    return render(request, "demo/home.html", {"demo_tasks": [(k, v[1], v[2]) for k, v in DEMO_TASKS.items()]})


@login_required
def start(request, key):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    actor = DEMO_TASKS[key][0] if key in DEMO_TASKS else None
    if actor is None:
        return redirect("demo-home")
    if key == "count":
        # Django's task API: the task belongs to the user of the ``on_behalf_of`` block, and
        # the result's id is the uuid of its status page.
        with usertasks.on_behalf_of(request.user):
            result = actor.enqueue()
        return redirect("usertasks:status", result.id)
    status = actor.send_for(request.user)
    return redirect(status)
