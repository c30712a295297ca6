"""Per-message profile of a worker process running tracked no-op user tasks.

    python bench/profile.py                      # 5,000 tasks, SQLite, 1 process, 8 threads
    python bench/profile.py --db postgres --conn-max-age 60 --n 5000
    python bench/profile.py --variant raw        # the same worker without usertasks, for contrast

Starts a private Redis, a fresh database, and one ``dramatiq`` worker process with
``BENCH_PROFILE`` set (see ``bench/profiling_hooks.py``); enqueues the tasks with
``send_many_for``, waits until the broker holds no message, stops the worker and prints:

1. wall time per call of every middleware hook and of the status writer;
2. the functions where the worker threads and the writer thread spend their time (cProfile).

cProfile slows Python code down (roughly 1.5-2×), so read the shares, not the absolute rates.
The raw files stay in ``bench/results/profile-<timestamp>/`` (``python -m pstats`` opens them).
"""

import argparse
import glob
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--conn-max-age", type=int, default=0)
    p.add_argument("--variant", choices=("tracked", "raw", "orm", "admin"), default="tracked")
    p.add_argument("--top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--no-cprofile", action="store_true", help="hook timings only (less overhead)")
    a = p.parse_args()

    outdir = os.path.join(common.RESULTS, "profile-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(outdir, exist_ok=True)
    tmp = common.tmpdir()
    db = common.Database.postgres("usertasks_bench_profile") if a.db == "postgres" else common.Database.sqlite(
        tmp, "profile")
    db.create()
    redis = common.start_redis()
    try:
        extra = {"BENCH_PROFILE": outdir}
        if a.no_cprofile:
            extra["BENCH_PROFILE_NO_CPROFILE"] = "1"
        env = common.bench_env(db, variant="tracked", redis_url=redis.url, conn_max_age=a.conn_max_age)
        common.run_json([sys.executable, os.path.join(common.BENCH, "throughput.py"), "migrate"], env)
        env = common.bench_env(db, variant=a.variant, redis_url=redis.url, conn_max_age=a.conn_max_age, extra=extra)
        os.environ.update(env)
        import throughput

        broker = throughput.setup()
        send = throughput.make_sender(broker)
        with common.Worker.dramatiq(dict(os.environ), threads=a.threads, log=os.path.join(outdir, "worker.log")):
            send(50)
            common.wait_until(lambda: throughput.pending(broker) == 0, 300, what="warm-up")
            throughput.clean_tables()
            t0 = time.perf_counter()
            send(a.n)
            common.wait_until(lambda: throughput.pending(broker) == 0, 3600, interval=0.005, what="the tasks")
            seconds = time.perf_counter() - t0
            throughput.check(a.n)
        from django.db import connections

        connections.close_all()
    finally:
        redis.stop()
        db.drop()
    report(outdir, a, seconds)


def report(outdir, a, seconds):
    total = a.n + 50  # the warm-up ran under the profiler too
    print(f"\n{a.n} {a.variant} no-op tasks, {a.db}, CONN_MAX_AGE={a.conn_max_age}, 1 process, {a.threads} threads: "
          f"{seconds:.2f} s, {a.n / seconds:.0f} tasks/s (under the profiler)\n")
    hooks = {}
    for path in glob.glob(os.path.join(outdir, "hooks-*.json")):
        with open(path) as fh:
            for k, v in json.load(fh).items():
                h = hooks.setdefault(k, {"calls": 0, "seconds": 0.0})
                h["calls"] += v["calls"]
                h["seconds"] += v["seconds"]
    print("Wall time per message, by hook (summed over threads; per message = total / messages):")
    print(f"{'what':62} {'calls':>8} {'total s':>9} {'µs/call':>9} {'µs/msg':>8}")
    for k, v in sorted(hooks.items(), key=lambda kv: -kv[1]["seconds"]):
        per_call = v["seconds"] / v["calls"] * 1e6 if v["calls"] else 0
        print(f"{k:62} {v['calls']:8d} {v['seconds']:9.3f} {per_call:9.1f} {v['seconds'] / total * 1e6:8.1f}")
    batches = hooks.get("writer: batch (one transaction)")
    if batches and batches["calls"]:
        ops = sum(v["calls"] for k, v in hooks.items() if k.startswith("writer: ops"))
        print(f"\nwriter: {batches['calls']} transactions, {ops / batches['calls']:.1f} changes per transaction, "
              f"{batches['seconds'] / batches['calls'] * 1e3:.2f} ms per transaction")
    for kind in ("worker", "writer"):
        files = glob.glob(os.path.join(outdir, f"{kind}-*.pstats"))
        if not files:
            continue
        stats = pstats.Stats(*files)
        label = "worker threads (all 8 summed)" if kind == "worker" else "writer thread"
        print(f"\n== cProfile, {label}: top {a.top} by own time")
        stats.sort_stats("tottime").print_stats(a.top)
        print(f"\n== cProfile, {label}: top {a.top} by cumulative time")
        stats.sort_stats("cumulative").print_stats(a.top)
    print(f"raw profiles: {os.path.relpath(outdir, common.ROOT)}")


if __name__ == "__main__":
    main()
