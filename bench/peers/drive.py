"""Driver of the Celery + django-user-tasks baseline; runs in ``bench/.venv-peers``
(started by ``bench/run.py`` with the environment of ``common.peers_env``).

    python drive.py migrate
    python drive.py throughput --n 5000 --runs 3 --threads 8
    python drive.py sendcost
    python drive.py stepcost [--number 500]

``throughput`` starts one ``celery worker --pool threads --concurrency 8`` process, warms it up,
then for each run calls ``noop.delay(user_id=...)`` ``--n`` times (django-user-tasks writes the
status row from ``before_task_publish``) and stops the clock when every row is ``Succeeded``.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # bench/ (for common.py); never the repository root

import common  # noqa: E402


def setup():
    import celery_app  # noqa: F401  (django.setup())

    import user_tasks

    assert "site-packages" in user_tasks.__file__, f"not the real django-user-tasks: {user_tasks.__file__}"


def bench_user():
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"email": "bench@example.com"})
    return user


def clean():
    from user_tasks.models import UserTaskArtifact, UserTaskStatus

    for model in (UserTaskArtifact, UserTaskStatus):
        qs = model.objects.all()
        qs._raw_delete(qs.db)


def succeeded():
    from user_tasks.models import UserTaskStatus

    return UserTaskStatus.objects.filter(state=UserTaskStatus.SUCCEEDED).count()


def cmd_migrate(args):
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    common.emit({"migrated": True})


def cmd_throughput(args):
    setup()
    from celery_app import app
    from django.db import connections
    from peertasks.tasks import noop

    user_id = bench_user().pk
    clean()
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    connections.close_all()

    def send(n):
        for _ in range(n):
            noop.delay(user_id=user_id)

    def wait(n, timeout):
        common.wait_until(lambda: succeeded() >= n, timeout, interval=0.02, what="the tasks to succeed")

    runs = []
    with common.Worker.celery(dict(os.environ), threads=args.threads, log=args.log) as worker:
        send(max(50, 4 * args.threads))
        wait(max(50, 4 * args.threads), 300)
        for _ in range(args.runs):
            clean()
            if not worker.alive():
                raise RuntimeError("the celery worker died")
            t0 = time.perf_counter()
            send(args.n)
            t_sent = time.perf_counter()
            wait(args.n, args.timeout)
            t1 = time.perf_counter()
            runs.append({"seconds": t1 - t0, "enqueue_seconds": t_sent - t0, "rate": args.n / (t1 - t0),
                         "checked": succeeded()})
            connections.close_all()
            print(f"   celery+django-user-tasks: {runs[-1]['rate']:.0f} tasks/s", file=sys.stderr, flush=True)
    common.emit({"variant": "celery", "n": args.n, "threads": args.threads, "processes": 1, "runs": runs,
                 "median": statistics.median(r["rate"] for r in runs)})


def cmd_sendcost(args):
    """Queries, writes and broker round trips of one ``delay()`` of a user task."""
    setup()
    import redis.connection
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from peertasks.tasks import noop

    user_id = bench_user().pk
    noop.delay(user_id=user_id)
    trips = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        trips[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting
    samples = []
    for _ in range(args.n):
        trips[0] = 0
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            noop.delay(user_id=user_id)
            dt = time.perf_counter() - t0
        sql = [q["sql"] for q in ctx.captured_queries]
        writes = [s for s in sql if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]
        samples.append((len(sql), len(writes), trips[0], dt * 1e6, sql))
    redis.connection.AbstractConnection.send_packed_command = original
    clean()
    common.emit({"delay": {
        "queries_per_task": statistics.median(s[0] for s in samples),
        "writes_per_task": statistics.median(s[1] for s in samples),
        "broker_round_trips_per_task": statistics.median(s[2] for s in samples),
        "us_per_task": statistics.median(s[3] for s in samples),
        "sql": [s[:120] for s in samples[-1][4][:12]],
    }})


def cmd_stepcost(args):
    """Microseconds per ``UserTaskStatus.increment_completed_steps()``."""
    setup()
    from user_tasks.models import UserTaskStatus

    status = UserTaskStatus.objects.create(user=bench_user(), task_id="step-cost", task_class="bench.step",
                                           name="step cost", total_steps=10 ** 9)
    status.increment_completed_steps()
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(args.number):
            status.increment_completed_steps()
        dt = (time.perf_counter() - t0) / args.number * 1e6
        best = dt if best is None else min(best, dt)
    clean()
    common.emit({"us_per_call": {"increment_completed_steps()": best}, "number": args.number})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate")
    p = sub.add_parser("throughput")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--log", default=None)
    p = sub.add_parser("sendcost")
    p.add_argument("--n", type=int, default=50)
    p = sub.add_parser("stepcost")
    p.add_argument("--number", type=int, default=300)
    args = parser.parse_args()
    {"migrate": cmd_migrate, "throughput": cmd_throughput, "sendcost": cmd_sendcost, "stepcost": cmd_stepcost}[
        args.cmd](args)


if __name__ == "__main__":
    main()
