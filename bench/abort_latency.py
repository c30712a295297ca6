"""Abort latency: time from ``status.cancel()`` to the task having stopped.

A task steps every 10 ms (``tests.tasks_cancel.latency_probe``); the benchmark cancels it and
measures, over N runs, the time until the task raised ``Aborted`` (stamped by the task itself)
and until its row shows Canceled.  It uses the test settings: a private Redis, a SQLite file
(or ``DATABASE_URL``), and a real ``dramatiq`` worker process.

    python bench/abort_latency.py [--runs 40] [--step 0.01]

Target: p95 of "stopped" at most 100 ms beyond the step interval.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--step", type=float, default=0.01, help="seconds between two step() calls")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("USERTASKS_TEST_TMP", tempfile.mkdtemp(prefix="usertasks-bench-"))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    import redis as redis_lib

    call_command("migrate", verbosity=0)
    r = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    r.flushdb()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    from tests import tasks_cancel as t
    from usertasks.states import FINAL_STATES

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=ROOT,
               USERTASKS_TEST_DB_NAME=str(connection.settings_dict["NAME"]))
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "django_dramatiq.setup", "tests.tasks", "tests.tasks_cancel",
         "--processes", "1", "--threads", "4", "--worker-shutdown-timeout", "5000"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stopped, visible = [], []
    try:
        for i in range(args.runs):
            label = f"lat{i}"
            status = t.latency_probe.send_for(user, label=label, step_seconds=args.step)
            deadline = time.monotonic() + 60
            while not r.get(f"side-effect:started:{label}"):
                if time.monotonic() > deadline:
                    raise SystemExit("the worker did not start the task")
                time.sleep(0.01)
            time.sleep(0.2 + (i % 5) * 0.013)  # cancel at varying points of the step cycle
            t0 = time.time()
            status.cancel()
            while True:
                stamp = r.get(f"side-effect:stopped:{label}")
                if stamp:
                    break
                time.sleep(0.002)
            stopped.append(float(stamp) - t0)
            while True:
                status.refresh_from_db()
                if status.state in FINAL_STATES:
                    break
                time.sleep(0.002)
            visible.append(time.time() - t0)
            assert status.state == "Canceled", status.state
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()

    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    print(f"abort latency, {args.runs} runs, step every {args.step * 1000:g} ms, database {db}")
    print(f"  cancel() -> task stopped:     p50 {ms(statistics.median(stopped))}  p95 {ms(percentile(stopped, 95))}"
          f"  max {ms(max(stopped))}")
    print(f"  cancel() -> row is Canceled:  p50 {ms(statistics.median(visible))}  p95 {ms(percentile(visible, 95))}"
          f"  max {ms(max(visible))}")
    target = args.step + 0.1
    print(f"  target p95 <= {ms(target)}: {'met' if percentile(stopped, 95) <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
