"""Fan-out scaling and purge speed.

Fan-out: one user task fans out N children (``tests.tasks_fanout.fan_parent``: each child
increments a Redis counter); the time from ``send_for()`` to the container's final state, for
N = 1,000 and 10,000, against the same N messages of the same actor sent untracked
(``.send()``: no rows, no writes) and as N separate tracked tasks (``send_many_for``, no
emails), all processed by the same workers; medians of ``--runs`` runs.  A child's end costs O(1)
(one counter UPDATE on the parent), so the per-child cost must not grow with N.

Each run also reports the CPU seconds (Linux ``/proc``) of the untracked messages and of the
fan-out: the machine's, the time stolen by the hypervisor, and what the run's own processes
spent (worker processes, this driver, PostgreSQL and Redis).  On a shared VM, where the time
stolen varies by the minute, the ratio of the runs' own CPU seconds is the steadier figure;
the ratios are medians of each run's own.

Purge: ``purge()`` over finished tasks (each with two events; a tenth with a stored file
artifact), in rows per second.

It uses the test settings: a private Redis, a SQLite file configured as ``docs/deployment.md``
recommends (WAL; ``USERTASKS_TEST_SQLITE_WAL=0`` for Django's defaults) or ``DATABASE_URL``, and
real ``dramatiq`` worker processes (2 processes x 4 threads by default).  The broker does queue
maintenance at Dramatiq's default rate (the tests do it on every command, to recover the messages
of the workers they kill at once).

    python bench/fanout.py [--sizes 1000 10000] [--runs 3] [--purge 20000] [--worker-timeout 100] [--no-wake]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_fanout python bench/fanout.py

Targets: per-child cost at 10,000 <= 1.2x the cost at 1,000; tracked total <= 1.3x untracked.
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

import common  # noqa: E402  (bench/, the script's own directory)


def ensure_postgres_database(url):
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    with psycopg.connect(host=cfg["HOST"] or "127.0.0.1", port=cfg["PORT"] or 5432, user=cfg["USER"],
                         dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--purge", type=int, default=20000, help="finished tasks to purge (0: skip)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size; medians are reported")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="sizes 500 and 2,000; purge 5,000")
    parser.add_argument("--worker-timeout", type=int, default=None, metavar="MS",
                        help="Dramatiq's worker timeout of the worker processes (dramatiq_worker_timeout; "
                             "default: Dramatiq's, 1,000 ms): the longest an idle consumer sleeps between polls")
    parser.add_argument("--no-wake", action="store_true",
                        help="workers without wake-ups (USERTASKS['WAKE_CONSUMERS'] = False): their consumers poll "
                             "as Dramatiq's do")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.purge = [500, 2000], 5000

    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        ensure_postgres_database(os.environ["DATABASE_URL"])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ["USERTASKS_TEST_NOTIFY"] = "0"  # separate tracked tasks would email, children never do
    # Dramatiq's default queue maintenance (0.1 % of commands), not the tests' (every command).
    os.environ.setdefault("USERTASKS_TEST_MAINTENANCE_CHANCE", "1000")
    # SQLite as docs/deployment.md configures it (WAL, synchronous=NORMAL, IMMEDIATE transactions).
    os.environ.setdefault("USERTASKS_TEST_SQLITE_WAL", "1")
    os.environ.setdefault("USERTASKS_TEST_TMP", tempfile.mkdtemp(prefix="usertasks-bench-"))
    import logging

    import django

    django.setup()
    logging.getLogger("usertasks").setLevel(logging.ERROR)  # the untracked sends warn once
    import redis as redis_lib
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from tests import tasks_fanout as t
    from usertasks.models import UserTaskStatus
    from usertasks.states import FINAL_STATES

    r = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])
    r.flushdb()
    UserTaskStatus.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", PYTHONPATH=ROOT,
               USERTASKS_TEST_DB_NAME=str(connection.settings_dict["NAME"]))
    if args.worker_timeout is not None:
        env["dramatiq_worker_timeout"] = str(args.worker_timeout)
    if args.no_wake:
        env["USERTASKS_TEST_WAKE_CONSUMERS"] = "0"
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "django_dramatiq.setup", "tests.tasks", "tests.tasks_fanout",
         "--processes", str(args.processes), "--threads", str(args.threads), "--worker-shutdown-timeout", "10000"],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = {"database": connection.vendor, "processes": args.processes, "threads": args.threads,
               "worker_timeout_ms": args.worker_timeout, "wake_consumers": not args.no_wake, "fanout": [], "purge": None}
    try:
        # Warm-up: workers up, connections open.
        warm = t.fan_parent.send_for(user, 20, label="warm")
        wait(lambda: UserTaskStatus.objects.get(pk=warm.pk).state in FINAL_STATES, 120)

        for n in args.sizes:
            runs = [one_size(t, r, user, n, f"{n}-{k}", worker.pid) for k in range(args.runs)]
            row = {"children": n, "runs": runs}
            for key in ("tracked_s", "untracked_s", "plain_tracked_s"):
                row[key] = round(statistics.median(run[key] for run in runs), 2)
            for key in ("untracked_cpu", "tracked_cpu"):
                row[key] = {k: round(statistics.median(run[key][k] for run in runs), 2) for k in runs[0][key]}
            row["per_child_ms"] = round(1000 * row["tracked_s"] / n, 3)
            row["ratio"] = round(row["tracked_s"] / row["untracked_s"], 2)
            # Medians of each run's own ratios: on a shared VM the machine's speed drifts between
            # runs more than between the two halves of one run.
            row["ratio_of_runs"] = round(statistics.median(r["tracked_s"] / r["untracked_s"] for r in runs), 2)
            if runs[0]["untracked_cpu"].get("ours"):
                row["cpu_ratio"] = round(statistics.median(
                    r["tracked_cpu"]["ours"] / r["untracked_cpu"]["ours"] for r in runs), 2)
            row["ratio_to_plain"] = round(row["tracked_s"] / row["plain_tracked_s"], 2)
            results["fanout"].append(row)
            print(f"fan-out {n:>6}: {row['tracked_s']:7.2f} s ({row['per_child_ms']:.2f} ms/child); same tasks "
                  f"untracked {row['untracked_s']:7.2f} s (x{row['ratio']:.2f}; median of the runs' ratios "
                  f"x{row['ratio_of_runs']:.2f}, of their CPU x{row.get('cpu_ratio', 0):.2f}); as {n} separate tracked tasks "
                  f"{row['plain_tracked_s']:7.2f} s (x{row['ratio_to_plain']:.2f})  [medians of {args.runs}]; "
                  f"CPU s untracked {row['untracked_cpu']}, fan-out {row['tracked_cpu']}", flush=True)
    finally:
        worker.terminate()
        worker.wait(60)
    fan = results["fanout"]
    if len(fan) >= 2:
        results["per_child_growth"] = round(fan[-1]["per_child_ms"] / fan[0]["per_child_ms"], 2)
        print(f"per-child cost at {fan[-1]['children']:,} / at {fan[0]['children']:,}: {results['per_child_growth']:.2f}")

    if args.purge:
        results["purge"] = bench_purge(user, args.purge)
    print(json.dumps(results))


def one_size(t, r, user, n, label, worker_session):
    """One run of each of the three ways to process ``n`` children: seconds, and CPU seconds
    (see ``common.CpuMeter``) of the untracked run and of the fan-out."""
    from usertasks.models import UserTaskStatus
    from usertasks.states import FINAL_STATES

    key = f"side-effect:fanchild:untracked{label}"
    cpu = common.CpuMeter(worker_session)
    t0 = time.perf_counter()
    for i in range(n):
        t.fan_child.send(i=i, label=f"untracked{label}")
    wait(lambda: int(r.get(key) or 0) >= n, 3600)
    untracked = time.perf_counter() - t0
    untracked_cpu = cpu.since()

    t0 = time.perf_counter()
    t.fan_child.send_many_for(user, [{"i": i, "label": f"plain{label}"} for i in range(n)])
    wait(lambda: UserTaskStatus.objects.filter(task_class="fan_child", parent__isnull=True,
                                               state__in=FINAL_STATES).count() >= n, 3600, 0.2)
    plain = time.perf_counter() - t0
    UserTaskStatus.objects.filter(task_class="fan_child").delete()

    cpu = common.CpuMeter(worker_session)
    t0 = time.perf_counter()
    status = t.fan_parent.send_for(user, n, label=f"tracked{label}")
    # Polled as often as the untracked run's counter (every 20 ms), so neither clock stops later.
    wait(lambda: UserTaskStatus.objects.filter(pk=status.pk, state__in=FINAL_STATES).exists(), 3600)
    tracked = time.perf_counter() - t0
    tracked_cpu = cpu.since()
    status.refresh_from_db()
    assert status.children_succeeded == n, status.message
    UserTaskStatus.objects.filter(parent__isnull=False).delete()
    print(f"  {n:>6} children: fan-out {tracked:6.2f} s, untracked {untracked:6.2f} s (x{tracked / untracked:.2f}), "
          f"separate tracked tasks {plain:6.2f} s; CPU s untracked {untracked_cpu}, fan-out {tracked_cpu}", flush=True)
    return {"tracked_s": round(tracked, 3), "untracked_s": round(untracked, 3), "plain_tracked_s": round(plain, 3),
            "untracked_cpu": untracked_cpu, "tracked_cpu": tracked_cpu}


def bench_purge(user, n):
    from datetime import timedelta

    from django.core.files.base import ContentFile
    from django.utils import timezone

    from usertasks.artifacts import create_artifact
    from usertasks.models import EventKind, UserTaskEvent, UserTaskStatus
    from usertasks.purge import purge
    from usertasks.states import State

    UserTaskStatus.objects.all().delete()
    old = timezone.now() - timedelta(days=60)
    for start in range(0, n, 2000):
        rows = [
            UserTaskStatus(user=user, task_id=f"purge-{i}", task_class="bench", name=f"task {i}",
                           state=State.SUCCEEDED, created=old, finished=old)
            for i in range(start, min(n, start + 2000))
        ]
        UserTaskStatus.objects.bulk_create(rows)
    ids = list(UserTaskStatus.objects.filter(task_class="bench").values_list("pk", flat=True))
    for start in range(0, len(ids), 2000):
        UserTaskEvent.objects.bulk_create(
            [UserTaskEvent(status_id=pk, kind=kind) for pk in ids[start:start + 2000]
             for kind in (EventKind.ENQUEUED, EventKind.SUCCEEDED)]
        )
    for pk in ids[:: 10]:
        create_artifact(pk, "out", file=ContentFile(b"x" * 100, name="out.csv"))
    rows = n + 2 * n + len(ids[::10])
    t0 = time.perf_counter()
    result = purge()
    seconds = time.perf_counter() - t0
    out = {"tasks": result.tasks, "files": result.files, "rows": rows, "seconds": round(seconds, 2),
           "tasks_per_s": round(result.tasks / seconds), "rows_per_s": round(rows / seconds)}
    print(f"purge: {result.tasks:,} tasks ({rows:,} rows, {result.files:,} files) in {seconds:.2f} s: "
          f"{out['tasks_per_s']:,} tasks/s, {out['rows_per_s']:,} rows/s", flush=True)
    return out


def wait(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(interval)


if __name__ == "__main__":
    main()
