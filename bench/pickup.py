"""Pickup latency: how soon an idle worker starts a task sent with ``send_for()``.

A worker that has been idle for ``--idle`` seconds gets one task (``tests.tasks.noop``); the
latency is the time from the row's creation (just before the message is sent) to the task's
start, as the row records them.  It is measured for each configuration in turn, each with its
own worker process (``--threads`` threads):

* ``wake``: usertasks as shipped (``USERTASKS["WAKE_CONSUMERS"]``: the send wakes the idle
  consumers, ``usertasks.redis.wakeup``), Dramatiq's default worker timeout (1 s);
* ``poll``: the same with wake-ups off, so the consumers poll as Dramatiq's do: after an empty
  fetch they sleep, 5 ms doubling up to the worker timeout;
* ``poll-100``: wake-ups off and a worker timeout of 100 ms (``dramatiq_worker_timeout``).

It uses the test settings: a private Redis, a SQLite file (or ``DATABASE_URL``).

    python bench/pickup.py [--runs 8] [--idle 3] [--threads 4] [--configs wake,poll,poll-100]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "wake": {},
    "poll": {"USERTASKS_TEST_WAKE_CONSUMERS": "0"},
    "poll-100": {"USERTASKS_TEST_WAKE_CONSUMERS": "0", "dramatiq_worker_timeout": "100"},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="tasks per configuration")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds the worker is idle before each task")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("USERTASKS_TEST_TMP", tempfile.mkdtemp(prefix="usertasks-bench-"))
    os.environ["USERTASKS_TEST_NOTIFY"] = "0"
    os.environ.setdefault("USERTASKS_TEST_MAINTENANCE_CHANCE", "1000")  # Dramatiq's default
    import django

    django.setup()
    import redis as redis_lib
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from tests import tasks
    from usertasks.models import UserTaskStatus
    from usertasks.states import FINAL_STATES

    r = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    user, _ = get_user_model().objects.get_or_create(username="bench")
    results = {"database": connection.vendor, "threads": args.threads, "idle_s": args.idle, "configs": {}}
    for name in args.configs.split(","):
        r.flushdb()
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=ROOT,
                   USERTASKS_TEST_DB_NAME=str(connection.settings_dict["NAME"]), **CONFIGS[name])
        worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "django_dramatiq.setup", "tests.tasks",
             "--processes", "1", "--threads", str(args.threads)],
            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        latencies = []
        try:
            wait_final(tasks.noop.send_for(user, label="warm"), UserTaskStatus, FINAL_STATES)
            for i in range(args.runs):
                time.sleep(args.idle)
                status = wait_final(tasks.noop.send_for(user, label=f"{name}{i}"), UserTaskStatus, FINAL_STATES)
                latencies.append((status.started - status.created).total_seconds() * 1000)
        finally:
            worker.terminate()
            worker.wait(60)
        row = {"median_ms": round(statistics.median(latencies), 1), "min_ms": round(min(latencies), 1),
               "max_ms": round(max(latencies), 1), "runs_ms": [round(v, 1) for v in latencies]}
        results["configs"][name] = row
        print(f"{name:>9}: median {row['median_ms']:6.1f} ms, {row['min_ms']:.1f}-{row['max_ms']:.1f} ms "
              f"over {args.runs} tasks after {args.idle:g} s idle", flush=True)
    UserTaskStatus.objects.filter(task_class="noop").delete()
    print(json.dumps(results))


def wait_final(status, model, final_states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = model.objects.get(pk=status.pk)
        if row.state in final_states:
            return row
        time.sleep(0.01)
    raise SystemExit("timed out")


if __name__ == "__main__":
    main()
