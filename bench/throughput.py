"""Driver of one Dramatiq benchmark configuration (run by ``bench/run.py``, one process per
configuration; settings come from the environment, see ``settings_bench.py``).

    python bench/throughput.py migrate
    python bench/throughput.py throughput --n 5000 --runs 3 --threads 8 [--processes 1] [--sleep]
                                          [--case noop|status|step100|artifact] [--prefill]
    python bench/throughput.py overload --n 20000 --case status [--processes 1]
    python bench/throughput.py sendcost [--n 200]
    python bench/throughput.py stepcost

``throughput`` starts a real ``dramatiq`` worker process on the same settings, warms it up,
then for each run enqueues ``--n`` messages of the variant's actor and stops the clock when
the broker holds no message any more (every message acknowledged).  A message of a tracked
task is acknowledged only after its final state is committed, so for ``tracked`` that is also
"every final state durable"; the rows are counted afterwards to check it.  The result is one
JSON line on stdout.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def setup():
    import django

    django.setup()
    import dramatiq

    import actors_bench  # noqa: F401  (declares the actors on the broker)

    return dramatiq.get_broker()


def variant():
    return os.environ["BENCH_VARIANT"]


def bench_user():
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"email": "bench@example.com"})
    return user


def clean_tables():
    """Empty the tables the variants write (outside the timed part)."""
    from django.apps import apps
    from django.db import connection

    names = ["benchapp.Row", "django_dramatiq.Task"]
    if apps.is_installed("usertasks"):
        names[:0] = ["usertasks.UserTaskNotification", "usertasks.UserTaskEvent", "usertasks.UserTaskArtifact",
                     "usertasks.UserTaskStatus"]
    for name in names:
        model = apps.get_model(name)
        qs = model._default_manager.all()
        qs._raw_delete(qs.db)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


#: The raw counterpart of each case of ``--case`` (``bench/likeforlike.py``).
RAW_CASE = {"noop": "raw_noop", "status": "raw_noop", "step100": "raw_step100", "artifact": "raw_noop"}


def make_sender(broker, n_batch=500, *, sleep=False, mode="bulk", case="noop"):
    """A function ``send(n)`` enqueueing ``n`` messages of this variant's actor."""
    import actors_bench

    v = variant()
    if v == "tracked":
        actor = actors_bench.tracked_sleep if sleep else getattr(actors_bench, f"tracked_{case}")
        user = bench_user()
        if mode == "single":
            def send(n):
                for _ in range(n):
                    actor.send_for(user)
        else:
            def send(n):
                for start in range(0, n, n_batch):
                    actor.send_many_for(user, [()] * min(n_batch, n - start))
        return send
    actor = {
        "raw": actors_bench.raw_sleep if sleep else getattr(actors_bench, RAW_CASE[case]),
        "orm": actors_bench.orm_write,
        "admin": actors_bench.raw_noop,
    }[v]

    def send(n):
        for _ in range(n):
            actor.send()

    return send


def pending(broker):
    return broker.client.hlen(f"{broker.namespace}:{common.QUEUE}.msgs")


def check(n):
    """Count what the run left in the database; raises if a task is missing."""
    v = variant()
    if v == "tracked":
        from usertasks.models import UserTaskStatus

        done = UserTaskStatus.objects.filter(state="Succeeded").count()
    elif v == "orm":
        from benchapp.models import Row

        done = Row.objects.count()
    elif v == "admin":
        from django_dramatiq.models import Task

        # Rows, whatever their status: AdminMiddleware writes "enqueued" from the sender's
        # after_enqueue, which can land after the worker's "done" and overwrite it (a race in
        # django_dramatiq, not a lost task).
        done = Task.tasks.count()
    else:
        return None
    if done != n:
        raise AssertionError(f"{v}: {done} of {n} tasks recorded as done")
    return done


def one_run(broker, send, n, timeout, worker=None):
    stolen = common.stolen_seconds()
    meter = common.CpuMeter(worker.proc.pid) if worker is not None else None
    t0 = time.perf_counter()
    send(n)
    t_sent = time.perf_counter()
    common.wait_until(lambda: pending(broker) == 0, timeout, interval=0.005, what="the queue to drain")
    t1 = time.perf_counter()
    # Share of the machine's CPU time the hypervisor gave to other VMs during the run.
    steal = (common.stolen_seconds() - stolen) / ((t1 - t0) * (os.cpu_count() or 1))
    run = {"seconds": t1 - t0, "enqueue_seconds": t_sent - t0, "rate": n / (t1 - t0), "steal": round(steal, 3)}
    cpu = meter.since() if meter is not None else {}
    if cpu:
        run["cpu"] = cpu
        run["cpu_ms_per_task"] = round(1000 * cpu["ours"] / n, 3)  # worker, driver, database and Redis
    return run


def prefilled_run(broker, n, timeout, worker):
    """``--prefill``: the ``n`` messages (and, for usertasks, their rows) are already queued when
    ``worker`` starts.  The rate is taken between the moments 10 % and 90 % of them have been
    acknowledged: the worker processes alone, at full speed, without the one driver's
    enqueueing, their boot, or the last stragglers."""
    marks = {}
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    worker.start()
    meter = stolen = None
    while True:
        left = pending(broker)
        now = time.perf_counter()
        if "first" not in marks and left <= 0.9 * n:
            marks["first"] = now
            meter, stolen = common.CpuMeter(worker.proc.pid), common.stolen_seconds()
        if "last" not in marks and left <= 0.1 * n:
            marks["last"] = now
            cpu, stolen = meter.since(), common.stolen_seconds() - stolen
        if left == 0:
            marks["empty"] = now
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the queue did not drain")
        time.sleep(0.005)
    window = max(marks["last"] - marks["first"], 1e-3)
    run = {"seconds": marks["empty"] - start, "window_seconds": window, "rate": 0.8 * n / window,
           "steal": round(stolen / (window * (os.cpu_count() or 1)), 3)}
    if cpu:
        run["cpu"] = cpu
        run["cpu_ms_per_task"] = round(1000 * cpu["ours"] / (0.8 * n), 3)
    return run


def cmd_migrate(args):
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    common.emit({"migrated": True})


def cmd_throughput(args):
    broker = setup()
    from django.db import connections

    env = dict(os.environ)
    if args.sleep:
        env["BENCH_SLEEP_MS"] = str(args.sleep_ms)
    broker.flush_all()
    clean_tables()
    connections.close_all()
    send = make_sender(broker, sleep=args.sleep, mode=args.enqueue, case=args.case)
    worker = common.Worker.dramatiq(env, processes=args.processes, threads=args.threads, log=args.log)
    runs = []
    for run in (_prefilled_runs if args.prefill else _streamed_runs)(args, broker, send, worker):
        runs.append(run)
        print(f"   {variant()}: {run['rate']:.0f} tasks/s ({100 * run['steal']:.0f} % of the CPU time stolen, "
              f"{run.get('cpu_ms_per_task', 0):.2f} ms of CPU per task)", file=sys.stderr, flush=True)
    rates = [r["rate"] for r in runs]
    common.emit({
        "variant": variant(), "enqueue": args.enqueue if variant() == "tracked" else "send",
        "n": args.n, "threads": args.threads, "processes": args.processes,
        "sleep_ms": args.sleep_ms if args.sleep else 0, "prefill": args.prefill, "runs": runs,
        "case": args.case, "median": statistics.median(rates),
    })


def _streamed_runs(args, broker, send, worker):
    """One worker for all runs (warmed up first); each run enqueues while the worker consumes."""
    from django.db import connections

    with worker:
        # Warm-up: the worker has booted and every thread has run a message.
        send(max(50, 4 * args.threads * args.processes))
        common.wait_until(lambda: pending(broker) == 0, 300, what="the warm-up to finish")
        for _ in range(args.runs):
            clean_tables()
            connections.close_all()
            if not worker.alive():
                raise RuntimeError("the worker process died")
            run = one_run(broker, send, args.n, args.timeout, worker)
            run["checked"] = check(args.n)
            run.update(outbox_after(args.n))
            connections.close_all()
            yield run


def _prefilled_runs(args, broker, send, worker):
    """A fresh worker for each run, started once the run's messages are queued."""
    from django.db import connections

    for _ in range(args.runs):
        clean_tables()
        send(args.n)
        connections.close_all()
        try:
            run = prefilled_run(broker, args.n, args.timeout, worker)
            run.update(outbox_after(args.n))  # the worker's deliverer at work
        finally:
            worker.stop()
        run["checked"] = check(args.n)
        connections.close_all()
        yield run


def outbox_after(n, timeout=120):
    """Tracked runs with notifications: how many were still undelivered when the queue had
    drained, and how long until the outbox was empty (not part of the timed window)."""
    from django.apps import apps

    if variant() != "tracked" or not apps.is_installed("usertasks"):
        return {}
    from usertasks.models import UserTaskNotification

    def left():
        return UserTaskNotification.objects.filter(sent__isnull=True).count()

    t0 = time.perf_counter()
    pending_at_drain = left()
    total = UserTaskNotification.objects.count()
    if total:
        try:
            common.wait_until(lambda: left() == 0, timeout, interval=0.05, what="the outbox to empty")
        except TimeoutError:
            pass
    return {"notifications": total, "undelivered_at_drain": pending_at_drain,
            "outbox_empty_after": round(time.perf_counter() - t0, 2), "undelivered_after": left()}


def rss_kb(session):
    """Resident memory (kB) of the processes of ``session`` (the worker's process group)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
            if int(raw.rsplit(")", 1)[1].split()[3]) != session:
                continue
            with open(f"/proc/{entry}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return total


def cmd_overload(args):
    """``--n`` tasks enqueued (one message per send, as fast as the driver can) while a warm
    worker runs: time until the queue has drained, the worker's RSS every half second, and the
    writer's lag (how old the newest stored final state is while tasks are being finished)."""
    import threading

    broker = setup()
    from django.db import connections
    from django.db.models import Max

    broker.flush_all()
    clean_tables()
    connections.close_all()
    send = make_sender(broker, mode="single", case=args.case)
    worker = common.Worker.dramatiq(dict(os.environ), processes=args.processes, threads=args.threads, log=args.log)
    samples, lags = [], []
    with worker:
        send(max(50, 4 * args.threads * args.processes))
        common.wait_until(lambda: pending(broker) == 0, 300, what="the warm-up to finish")
        outbox_after(0)
        clean_tables()
        connections.close_all()
        done = threading.Event()
        t0 = time.perf_counter()

        def sampler():
            from django.utils import timezone

            last = 0.0
            while not done.is_set():
                now = time.perf_counter()
                if now - last >= 0.5:
                    last = now
                    samples.append((round(now - t0, 2), rss_kb(worker.proc.pid)))
                    if variant() == "tracked":
                        from usertasks.models import UserTaskStatus

                        newest = UserTaskStatus.objects.aggregate(m=Max("finished"))["m"]
                        if newest is not None and pending(broker):
                            lags.append((timezone.now() - newest).total_seconds())
                time.sleep(0.05)
            connections.close_all()

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        send(args.n)
        t_sent = time.perf_counter()
        common.wait_until(lambda: pending(broker) == 0, args.timeout, interval=0.01, what="the queue to drain")
        t1 = time.perf_counter()
        done.set()
        thread.join()
        checked = check(args.n)
        extra = outbox_after(args.n)
    rss = [kb for _, kb in samples]
    tail = rss[len(rss) // 2:] or rss
    common.emit({
        "variant": variant(), "case": args.case, "n": args.n, "processes": args.processes, "threads": args.threads,
        "seconds": t1 - t0, "enqueue_seconds": t_sent - t0, "rate": args.n / (t1 - t0), "checked": checked,
        "rss_kb": samples, "rss_first_kb": rss[0] if rss else None, "rss_max_kb": max(rss) if rss else None,
        "rss_growth_second_half_kb": (max(tail) - min(tail)) if tail else None,
        "writer_lag_p50": statistics.median(lags) if lags else None, "writer_lag_max": max(lags) if lags else None,
        **extra,
    })


def cmd_sendcost(args):
    """Queries, writes and broker round trips of ``send_for`` and ``send_many_for``."""
    broker = setup()
    import redis.connection
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    import actors_bench

    actor = actors_bench.tracked_noop
    user = bench_user()
    broker.flush_all()
    clean_tables()
    trips = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        trips[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting

    def measure(fn, tasks):
        trips[0] = 0
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        sql = [q["sql"] for q in ctx.captured_queries]
        writes = [s for s in sql if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
                  or (s.upper().startswith("WITH") and any(w in s.upper() for w in ("INSERT ", "UPDATE ", "DELETE ")))]
        return {"tasks": tasks, "queries_per_task": len(sql) / tasks, "writes_per_task": len(writes) / tasks,
                "broker_round_trips_per_task": trips[0] / tasks, "us_per_task": dt / tasks * 1e6,
                "sql": [s[:120] for s in sql[:12]]}

    actor.send_for(user)  # warm caches (content types, prepared scripts)
    single = [measure(lambda: actor.send_for(user), 1) for _ in range(args.n)]
    bulk = measure(lambda: actor.send_many_for(user, [()] * 1000), 1000)
    redis.connection.AbstractConnection.send_packed_command = original
    broker.flush_all()
    clean_tables()
    common.emit({
        "send_for": {
            "queries_per_task": statistics.median(s["queries_per_task"] for s in single),
            "writes_per_task": statistics.median(s["writes_per_task"] for s in single),
            "broker_round_trips_per_task": statistics.median(s["broker_round_trips_per_task"] for s in single),
            "us_per_task": statistics.median(s["us_per_task"] for s in single),
            "sql": single[-1]["sql"],
        },
        "send_many_for_1000": bulk,
    })


def cmd_stepcost(args):
    """Microseconds per ``TaskContext.step()`` (in memory; no database)."""
    import timeit

    from usertasks.context import TaskContext

    ctx = TaskContext(status_id=1, message_id="m", actor_name="bench")
    out = {}
    for label, stmt in (("step()", "ctx.step()"), ("step(message=...)", "ctx.step(message='item')")):
        number = args.number
        best = min(timeit.repeat(stmt, globals={"ctx": ctx}, number=number, repeat=5))
        out[label] = best / number * 1e6
    common.emit({"us_per_call": out, "number": args.number})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate")
    p = sub.add_parser("throughput")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--sleep", action="store_true", help="actors that sleep --sleep-ms instead of no-ops")
    p.add_argument("--sleep-ms", type=float, default=5.0)
    p.add_argument("--enqueue", choices=("bulk", "single"), default="bulk",
                   help="tracked only: send_many_for in batches of 500 (bulk) or send_for per task (single)")
    p.add_argument("--prefill", action="store_true",
                   help="queue each run's tasks first, then start a fresh worker; rate between the 10 %% and 90 %% marks")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--log", default=None, help="worker output goes here")
    p.add_argument("--case", choices=sorted(RAW_CASE), default="noop", help="what each task does")
    p = sub.add_parser("overload")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--case", choices=sorted(RAW_CASE), default="status")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--log", default=None)
    p = sub.add_parser("sendcost")
    p.add_argument("--n", type=int, default=100)
    p = sub.add_parser("stepcost")
    p.add_argument("--number", type=int, default=200000)
    args = parser.parse_args()
    {"migrate": cmd_migrate, "throughput": cmd_throughput, "overload": cmd_overload, "sendcost": cmd_sendcost,
     "stepcost": cmd_stepcost}[args.cmd](args)


if __name__ == "__main__":
    main()
