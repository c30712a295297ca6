"""Tracked tasks against raw Dramatiq, like for like, in the configuration users run.

    python bench/likeforlike.py                       # everything below, 3 rounds
    python bench/likeforlike.py --dbs sqlite --cases noop,status --processes 1 --rounds 3 --n 2000
    python bench/likeforlike.py --overload 20000 --no-throughput

For each database (``sqlite``: Django's default rollback journal; ``sqlite-wal``: WAL as
docs/deployment.md configures it; ``postgres``), each case (``noop``; ``status``: the body reads
``task.status``; ``step100``: 100 ``task.step()``; ``artifact``: ``task.add_artifact(text=...)``),
each number of worker processes (1 and 2, 8 threads each) and each enqueue mode:

* ``prefill``: the run's ``--n`` messages are queued first (raw: ``actor.send()`` per task;
  tracked: ``send_for()`` per task), then a fresh worker starts; the rate is taken between the
  moments 10 % and 90 % of them have been acknowledged;
* ``stream``: a warm worker runs while the driver enqueues (the same per-task sends); the clock
  runs from the first send until every message is acknowledged.

the variants run one after the other, alternating, ``--rounds`` times: ``raw`` (raw Dramatiq,
its own RedisBroker, no database), ``tracked`` (usertasks with its defaults: an email for every
finished task through the outbox), and ``--variants`` more (``tracked-quiet``: the same with
``NOTIFY = False``).  The medians and their ratios to raw are printed as a Markdown table and
the runs are saved in ``bench/results/likeforlike-<time>.json``.

``--overload N``: N tasks of ``--overload-case`` (default ``status``) sent one by one while a
warm worker runs; time to drain, the worker's RSS over time, the writer's lag.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

VARIANTS = {
    "raw": ("raw", {}),
    "tracked": ("tracked", {}),
    "tracked-quiet": ("tracked", {"BENCH_NOTIFY": "0"}),
}


def databases(names, tmp):
    out = []
    for name in names:
        if name == "postgres":
            if not common.postgres_available():
                print("== PostgreSQL does not answer: skipped", file=sys.stderr)
                continue
            out.append((name, common.Database.postgres("usertasks_bench_lfl"), {}))
        else:
            extra = {"BENCH_SQLITE_WAL": "1"} if name == "sqlite-wal" else {}
            out.append((name, common.Database.sqlite(tmp, name), extra))
    return out


def run_one(db, extra, variant, redis_url, argv, log):
    kind, env_extra = VARIANTS[variant]
    env = common.bench_env(db, variant=kind, redis_url=redis_url, extra=dict(extra, **env_extra))
    if argv[0] != "migrate":
        argv = [*argv, "--log", log]
    return common.run_json([sys.executable, "throughput.py", *argv], env, log=log)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbs", default="sqlite,sqlite-wal,postgres")
    parser.add_argument("--cases", default="noop,status,step100,artifact")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--modes", default="prefill,stream")
    parser.add_argument("--variants", default="raw,tracked,tracked-quiet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--overload", type=int, default=0, help="also the overload run with this many tasks")
    parser.add_argument("--overload-case", default="status")
    parser.add_argument("--overload-processes", type=int, default=1)
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()

    os.makedirs(common.RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = os.path.join(common.RESULTS, f"likeforlike-{stamp}.log")
    out_path = os.path.join(common.RESULTS, f"likeforlike-{stamp}.json")
    redis = common.start_redis()
    tmp = common.tmpdir()
    variants = args.variants.split(",")
    results = {"argv": sys.argv[1:], "started": stamp, "nproc": os.cpu_count(), "throughput": [], "overload": []}
    try:
        for name, db, extra in databases(args.dbs.split(","), tmp):
            db.create()
            run_one(db, extra, "tracked", redis.url, ["migrate"], log)
            if not args.no_throughput:
                for mode in args.modes.split(","):
                    for case in args.cases.split(","):
                        for processes in (int(p) for p in args.processes.split(",")):
                            for r in range(args.rounds):
                                for variant in variants:
                                    argv = ["throughput", "--n", str(args.n), "--runs", "1", "--threads",
                                            str(args.threads), "--processes", str(processes), "--case", case,
                                            "--enqueue", "single"]
                                    if mode == "prefill":
                                        argv.append("--prefill")
                                    res = run_one(db, extra, variant, redis.url, argv, log)
                                    row = {"db": name, "mode": mode, "case": case, "processes": processes,
                                           "variant": variant, "round": r, "rate": res["median"],
                                           "run": res["runs"][0]}
                                    results["throughput"].append(row)
                                    print(f"{name} {mode} {case} p={processes} {variant}: {res['median']:.0f}/s",
                                          file=sys.stderr, flush=True)
                                    _save(out_path, results)
            if args.overload:
                for r in range(args.rounds):
                    for variant in ("raw", "tracked"):
                        argv = ["overload", "--n", str(args.overload), "--case", args.overload_case,
                                "--processes", str(args.overload_processes), "--threads", str(args.threads)]
                        res = run_one(db, extra, variant, redis.url, argv, log)
                        res.update(db=name, round=r)
                        results["overload"].append(res)
                        print(f"{name} overload {variant}: {res['rate']:.0f}/s, RSS {res['rss_first_kb']}"
                              f"->{res['rss_max_kb']} kB, lag p50 {res.get('writer_lag_p50')}",
                              file=sys.stderr, flush=True)
                        _save(out_path, results)
            db.drop()
    finally:
        redis.stop()
    print(table(results))
    print(f"\nresults: {os.path.relpath(out_path, common.ROOT)}")


def _save(path, results):
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1)


def table(results):
    """Markdown tables of the medians and ratios to raw."""
    lines = []
    rows = results["throughput"]
    if rows:
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        others = [v for v in variants if v != "raw"]
        head = "| database | mode | case | processes | " + " | ".join(variants) + " | " + " | ".join(
            f"{v} / raw" for v in others) + " |"
        lines += [head, "|" + "---|" * (4 + len(variants) + len(others))]
        keys = list(dict.fromkeys((r["db"], r["mode"], r["case"], r["processes"]) for r in rows))
        for key in keys:
            med = {}
            for v in variants:
                rates = [r["rate"] for r in rows if (r["db"], r["mode"], r["case"], r["processes"]) == key
                         and r["variant"] == v]
                med[v] = statistics.median(rates) if rates else None
            cells = [f"{med[v]:,.0f}/s" if med[v] else "" for v in variants]
            ratios = [f"{med[v] / med['raw']:.2f}x" if med.get(v) and med.get("raw") else "" for v in others]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells + ratios) + " |")
    over = results["overload"]
    if over:
        lines += ["", "| database | variant | drain rate (median) | ratio | RSS start -> max (MB) | RSS growth, 2nd half (MB) "
                  "| writer lag p50 / max (s) |", "|---|---|---|---|---|---|---|"]
        dbs = list(dict.fromkeys(o["db"] for o in over))
        for d in dbs:
            raw = statistics.median(o["rate"] for o in over if o["db"] == d and o["variant"] == "raw")
            for v in ("raw", "tracked"):
                mine = [o for o in over if o["db"] == d and o["variant"] == v]
                rate = statistics.median(o["rate"] for o in mine)
                first = statistics.median(o["rss_first_kb"] or 0 for o in mine) / 1024
                peak = statistics.median(o["rss_max_kb"] or 0 for o in mine) / 1024
                growth = statistics.median(o["rss_growth_second_half_kb"] or 0 for o in mine) / 1024
                lag = [o["writer_lag_p50"] for o in mine if o.get("writer_lag_p50") is not None]
                lagmax = [o["writer_lag_max"] for o in mine if o.get("writer_lag_max") is not None]
                lag_text = f"{statistics.median(lag):.2f} / {max(lagmax):.2f}" if lag else ""
                lines.append(f"| {d} | {v} | {rate:,.0f}/s | {rate / raw:.2f}x | {first:.0f} -> {peak:.0f} | "
                             f"{growth:.1f} | {lag_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
