"""``make bench``: usertasks against raw Dramatiq, Dramatiq + one ORM write per task,
Dramatiq + django_dramatiq's AdminMiddleware and Celery + django-user-tasks, side by side in
one run, on SQLite and (when it answers on 127.0.0.1:5432) PostgreSQL.

    python bench/run.py                 # 5,000 tasks per run, 3 runs, 8 threads
    python bench/run.py --quick         # 1,000 tasks per run
    python bench/run.py --db sqlite --conn-max-age 0 --runs 5
    python bench/run.py --all           # also abort latency, fan-out, page latency if present

Prints a table of throughputs and ratios, writes ``bench/results/<timestamp>.json`` and draws
``docs/benchmarks.png``.  See ``bench/README.md`` for what each piece measures.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import BENCH, PEERS, ROOT, Database  # noqa: E402

THROUGHPUT = os.path.join(BENCH, "throughput.py")
PEERS_DRIVE = os.path.join(PEERS, "drive.py")
CHART = os.path.join(ROOT, "docs", "benchmarks.png")
OPTIONAL = ("abort_latency.py", "fanout.py", "page_latency.py", "pickup.py")

LABELS = {
    "raw": "raw Dramatiq (no database)",
    "tracked": "usertasks (send_many_for)",
    "tracked-single": "usertasks (send_for per task)",
    "orm": "Dramatiq + 1 ORM write/task",
    "admin": "Dramatiq + AdminMiddleware",
    "celery": "Celery + django-user-tasks",
}
ORDER = ["raw", "tracked", "tracked-single", "orm", "admin", "celery"]


def log(text):
    print(text, flush=True)


# -- facts -----------------------------------------------------------------------------------------


def _out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_facts(pg):
    from importlib import metadata

    facts = {
        "nproc": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "redis_server": _out([_redis_binary(), "--version"]),
    }
    for dist in ("django", "dramatiq", "django-dramatiq", "redis", "psycopg"):
        try:
            facts[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if pg:
        import psycopg

        with psycopg.connect(host=common.PG_HOST, port=common.PG_PORT, user=common.PG_USER, dbname="postgres") as c:
            facts["postgresql"] = c.execute("SHOW server_version").fetchone()[0]
    import sqlite3

    facts["sqlite"] = sqlite3.sqlite_version
    if os.environ.get("BENCH_SQLITE_WAL") == "1":
        facts["sqlite"] += " (WAL, synchronous=NORMAL)"
    if os.path.exists(common.peers_python()):
        facts["peers"] = _out([common.peers_python(), "-c",
                               "from importlib import metadata as m; print(', '.join(f'{d} {m.version(d)}' for d in "
                               "('celery', 'kombu', 'django-user-tasks', 'django')))"])
    return facts


def _redis_binary():
    sys.path.insert(0, ROOT)
    from usertasks.devredis import redis_server_binary

    return redis_server_binary()


# -- the runs --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, redis_url, tmp):
        self.args = args
        self.redis_url = redis_url
        self.tmp = tmp
        self.log_file = os.path.join(tmp, "workers.log")

    def ours(self, db, variant, argv, cma=0, extra=None):
        env = common.bench_env(db, variant=variant, redis_url=self.redis_url, conn_max_age=cma, extra=extra)
        return common.run_json([sys.executable, THROUGHPUT, *argv], env, log=self.log_file)

    def peers(self, db, argv, cma=0):
        env = common.peers_env(db, redis_url=self.redis_url, conn_max_age=cma)
        return common.run_json([common.peers_python(), PEERS_DRIVE, *argv], env, cwd=PEERS, log=self.log_file)

    def tp_args(self, extra=()):
        a = self.args
        return ["throughput", "--n", str(a.n), "--runs", str(a.runs), "--threads", str(a.threads),
                "--log", self.log_file, *extra]

    def throughput(self, kind, main_db, peers_db):
        a = self.args
        rows = []

        def record(key, cma, fn):
            if key not in a.variants:
                return
            label = f"{LABELS[key]}, CONN_MAX_AGE={cma}" if key != "raw" else LABELS[key]
            log(f"-- {kind}: {label}")
            try:
                res = fn()
            except Exception as exc:  # keep going: one broken variant must not lose the others
                log(f"   FAILED: {str(exc)[-1500:]}")
                res = {"error": str(exc)[-3000:]}
            res.update({"key": key, "db": kind, "conn_max_age": cma})
            if "median" in res:
                cpu = [r["cpu_ms_per_task"] for r in res["runs"] if "cpu_ms_per_task" in r]
                if cpu:
                    res["cpu_ms_per_task"] = statistics.median(cpu)
                log(f"   median {res['median']:.0f} tasks/s over {len(res['runs'])} runs"
                    + (f", {res['cpu_ms_per_task']:.2f} ms of CPU per task" if cpu else ""))
            rows.append(res)

        record("raw", None, lambda: self.ours(main_db, "raw", self.tp_args()))
        for i, cma in enumerate(a.conn_max_age):
            record("tracked", cma, lambda: self.ours(main_db, "tracked", self.tp_args(), cma))
            if i == 0 and not a.no_single:
                record("tracked-single", cma,
                       lambda: self.ours(main_db, "tracked", self.tp_args(["--enqueue", "single"]), cma))
            record("orm", cma, lambda: self.ours(main_db, "orm", self.tp_args(), cma))
            record("admin", cma, lambda: self.ours(main_db, "admin", self.tp_args(), cma))
            if not a.no_peers:
                record("celery", cma, lambda: self.peers(peers_db, ["throughput", "--n", str(a.n), "--runs",
                                                                     str(a.runs), "--threads", str(a.threads),
                                                                     "--log", self.log_file], cma))
        return rows

    def scaling(self, kind, main_db):
        """Tasks of 5 ms of sleep: 2 worker processes against 1.

        The runs alternate (1 process, 2 processes, 1, 2, ...; a fresh worker each), and the
        ratio is the median of each pair's: on a shared machine whose speed drifts over
        minutes, two blocks of runs minutes apart would measure the drift as much as the
        scaling."""
        a = self.args
        out = {}
        for variant in ("tracked", "raw"):
            rates = {1: [], 2: []}
            ratios = []
            cpu = {}
            details = {}
            for k in range(a.runs):
                pair = {}
                for processes in (1, 2):
                    log(f"-- {kind}: {variant}, 5 ms sleep, {processes} process(es), run {k + 1} of {a.runs}")
                    try:
                        argv = ["throughput", "--n", str(a.scaling_n), "--runs", "1", "--threads", str(a.threads),
                                "--processes", str(processes), "--sleep", "--log", self.log_file]
                        if a.scaling_mode == "prefilled":
                            argv.append("--prefill")
                        r = self.ours(main_db, variant, argv)
                        pair[processes] = r["median"]
                        rates[processes].append(r["median"])
                        run = r["runs"][0]
                        cpu.setdefault(processes, []).append(run.get("cpu_ms_per_task"))
                        details.setdefault(processes, []).append(run)
                        log(f"   {r['median']:.0f} tasks/s ({100 * run.get('steal', 0):.0f} % of the CPU time stolen, "
                            f"{run.get('cpu_ms_per_task') or 0:.2f} ms of CPU per task)")
                    except Exception as exc:
                        log(f"   FAILED: {str(exc)[-1500:]}")
                if 1 in pair and 2 in pair:
                    ratios.append(pair[2] / pair[1])
            res = {p: statistics.median(v) for p, v in rates.items() if v}
            res["runs"] = rates
            res["details"] = details  # every run as throughput.py reported it (enqueue time, CPU, steal)
            res["cpu_ms_per_task"] = {p: statistics.median([x for x in v if x is not None] or [0]) for p, v in cpu.items()}
            if ratios:
                res["ratio"] = statistics.median(ratios)
                res["ratios"] = ratios
            res["mode"] = a.scaling_mode
            out[variant] = res
        return out


QUICK_ARGS = {
    "abort_latency.py": ["--runs", "10"],
    "fanout.py": ["--quick"],
    "page_latency.py": ["--rows", "100000", "--requests", "100"],
    "pickup.py": ["--runs", "4", "--idle", "2"],
}


def run_optional(args):
    """The other benchmark scripts of ``bench/`` (when present), as extra sections.  They run
    with this process's environment (``DATABASE_URL`` selects PostgreSQL for them)."""
    out = {}
    for name in OPTIONAL:
        path = os.path.join(BENCH, name)
        if not os.path.exists(path):
            continue
        argv = [sys.executable, path] + (QUICK_ARGS.get(name, []) if args.quick else [])
        log(f"== {' '.join([name] + argv[2:])}")
        try:
            proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            log("   timed out after 3600 s")
            out[name] = {"returncode": None, "error": "timeout"}
            continue
        print(proc.stdout[-6000:], flush=True)
        if proc.returncode != 0:
            log(f"   exited with {proc.returncode}: {proc.stderr[-1500:]}")
        out[name] = {"argv": argv[1:], "returncode": proc.returncode, "stdout": proc.stdout[-20000:],
                     "stderr": proc.stderr[-4000:]}
    return out


# -- report ----------------------------------------------------------------------------------------


def medians(rows):
    return {(r["key"], r["db"], r["conn_max_age"]): r.get("median") for r in rows}


def table(rows, kinds, cmas):
    """Markdown table: one line per variant and CONN_MAX_AGE, a column group per database."""
    m = medians(rows)
    head = "| variant | CONN_MAX_AGE |"
    sep = "|---|---|"
    for kind in kinds:
        name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[kind]
        head += f" {name} tasks/s | × raw | × Celery+dut |"
        sep += "---:|---:|---:|"
    lines = [head, sep]
    for key in ORDER:
        for cma in ([None] if key == "raw" else cmas):
            if not any((key, k, cma) in m for k in kinds):
                continue
            line = f"| {LABELS[key]} | {'—' if cma is None else cma} |"
            for kind in kinds:
                v = m.get((key, kind, cma))
                raw = m.get(("raw", kind, None))
                cel = m.get(("celery", kind, cma)) if cma is not None else None
                line += f" {_n(v)} | {_r(v, raw)} | {_r(v, cel)} |"
            lines.append(line)
    return "\n".join(lines)


def _n(v):
    return "—" if v is None else f"{v:,.0f}"


def _r(v, base):
    return "—" if v is None or not base else f"{v / base:.2f}×"


def chart(rows, kinds, cmas, path, subtitle=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = medians(rows)
    keys = [k for k in ORDER if any(m.get((k, kind, c)) for kind in kinds for c in ([None] + cmas))]
    series = [(kind, c) for kind in kinds for c in cmas]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, (kind, c) in enumerate(series):
        values = [m.get((k, kind, None if k == "raw" else c)) or 0 for k in keys]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(keys))]
        name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[kind]
        bars = ax.bar(xs, values, width, label=f"{name}, CONN_MAX_AGE={c}")
        for bar, v in zip(bars, values):
            if v:
                ax.annotate(f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([LABELS[k].replace(" (", "\n(").replace(" + ", "\n+ ") for k in keys], fontsize=8)
    ax.set_ylabel("no-op tasks per second (median)")
    ax.set_yscale("log")
    top = max((v for v in m.values() if v), default=1)
    ax.set_ylim(top=top * 2.5)  # room for the labels
    ax.set_title("Throughput of no-op tasks: 1 worker process, same Redis (higher is better)"
                 + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def subtitle(result):
    args, facts = result["args"], result["facts"]
    text = (f"{args['n']:,} tasks per run, median of {args['runs']}, {args['threads']} threads, "
            f"{facts['nproc']} CPUs, load {facts['loadavg_start'][0]:.1f}")
    return text + (f"; {args['note']}" if args.get("note") else "")


def replot(path, out):
    with open(path) as fh:
        result = json.load(fh)
    rows = result["throughput"]
    kinds = [k for k in ("sqlite", "postgres") if any(r["db"] == k for r in rows)]
    chart(rows, kinds, result["args"]["conn_max_age"], out, subtitle(result))
    log(f"chart: {os.path.relpath(out, ROOT)}")


# -- main ------------------------------------------------------------------------------------------


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 tasks per run instead of 5,000")
    p.add_argument("--n", type=int, help="tasks per run (default 5000, 1000 with --quick)")
    p.add_argument("--runs", type=int, default=3, help="runs per configuration; the median is reported")
    p.add_argument("--threads", type=int, default=8, help="worker threads (Dramatiq) / concurrency (Celery)")
    p.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--conn-max-age", default="0,60", help="comma-separated CONN_MAX_AGE values")
    p.add_argument("--scaling-n", type=int, help="tasks per run of the 1-vs-2-processes test (default n)")
    p.add_argument("--scaling-mode", choices=("prefilled", "streamed"), default="prefilled",
                   help="1-vs-2-processes test: each run's tasks queued before a fresh worker starts, the rate "
                        "taken between the 10 %% and 90 %% marks (prefilled: the worker processes alone), or "
                        "enqueued by the one driver while the workers consume (streamed, as the throughput runs)")
    p.add_argument("--sections", default="throughput,step,send,scaling",
                   help="comma-separated subset of: throughput, step, send, scaling")
    p.add_argument("--variants", default=",".join(ORDER),
                   help=f"comma-separated subset of the throughput variants ({', '.join(ORDER)})")
    p.add_argument("--no-peers", action="store_true", help="skip Celery + django-user-tasks")
    p.add_argument("--no-single", action="store_true", help="skip the send_for-per-task variant")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--chart", default=CHART, help="where to draw the PNG")
    p.add_argument("--all", action="store_true", help="also run abort_latency.py, fanout.py, page_latency.py, pickup.py")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine under load')")
    p.add_argument("--sqlite-wal", action="store_true",
                   help="SQLite in WAL mode with synchronous=NORMAL, as docs/deployment.md configures it "
                        "(default: Django's rollback journal, the same for every variant)")
    p.add_argument("--replot", metavar="RESULTS_JSON", help="only redraw the chart from a saved result")
    a = p.parse_args()
    a.n = a.n or (1000 if a.quick else 5000)
    a.scaling_n = a.scaling_n or max(500, a.n)
    a.conn_max_age = [int(x) for x in a.conn_max_age.split(",") if x != ""]
    a.db = [x.strip() for x in a.db.split(",") if x.strip()]
    a.sections = {x.strip() for x in a.sections.split(",")}
    a.variants = {x.strip() for x in a.variants.split(",") if x.strip()}
    unknown = a.variants - set(ORDER)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if a.no_peers:
        a.variants.discard("celery")
    if a.no_single:
        a.variants.discard("tracked-single")
    if "celery" not in a.variants and not a.sections & {"send", "step"}:
        a.no_peers = True  # nothing else needs the peers' virtualenv
    return a


def main():
    a = parse()
    if a.replot:
        return replot(a.replot, a.chart)
    if a.sqlite_wal:
        os.environ["BENCH_SQLITE_WAL"] = "1"  # read by settings_bench in every process started
    started = time.time()
    kinds = []
    for kind in a.db:
        if kind == "postgres" and not common.postgres_available():
            log(f"== PostgreSQL not reachable on {common.PG_HOST}:{common.PG_PORT}: skipped")
            continue
        kinds.append(kind)
    if not a.no_peers:
        common.ensure_peers_venv()
    facts = machine_facts("postgres" in kinds)
    log(f"== {facts['nproc']} CPUs, load {facts['loadavg_start']}, Python {facts['python']}, "
        f"n={a.n}, runs={a.runs}, threads={a.threads}")
    tmp = common.tmpdir()
    redis = common.start_redis()
    bench = Bench(a, redis.url, tmp)
    result = {"args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()}, "facts": facts,
              "throughput": [], "scaling": {}, "send_cost": {}, "step_cost": {}}
    try:
        for kind in kinds:
            if kind == "postgres":
                main_db, peers_db = Database.postgres("usertasks_bench"), Database.postgres("usertasks_bench_peers")
            else:
                main_db, peers_db = Database.sqlite(tmp, "bench"), Database.sqlite(tmp, "peers")
            log(f"== {kind}")
            main_db.create()
            if not a.no_peers:
                peers_db.create()
            try:
                bench.ours(main_db, "tracked", ["migrate"])
                if not a.no_peers:
                    bench.peers(peers_db, ["migrate"])
                if "throughput" in a.sections:
                    result["throughput"] += bench.throughput(kind, main_db, peers_db)
                if "send" in a.sections:
                    log(f"-- {kind}: send cost")
                    sc = {"usertasks": bench.ours(main_db, "tracked", ["sendcost"])}
                    if not a.no_peers:
                        sc["django-user-tasks"] = bench.peers(peers_db, ["sendcost"])
                    result["send_cost"][kind] = sc
                if "scaling" in a.sections:
                    result["scaling"][kind] = bench.scaling(kind, main_db)
                if "step" in a.sections and kind == "sqlite":
                    log("-- step cost")
                    result["step_cost"]["usertasks"] = bench.ours(main_db, "tracked", ["stepcost"])
                    if not a.no_peers:
                        result["step_cost"]["django-user-tasks (SQLite)"] = bench.peers(peers_db, ["stepcost"])
            finally:
                main_db.drop()
                if not a.no_peers:
                    peers_db.drop()
        if a.all:
            result["optional"] = run_optional(a)
    finally:
        redis.stop()
    result["facts"]["loadavg_end"] = os.getloadavg()
    result["seconds"] = time.time() - started
    result["worker_log"] = bench.log_file
    log(f"worker and driver output: {bench.log_file}")
    report(result, kinds, a)


def report(result, kinds, a):
    rows = result["throughput"]
    log("")
    if rows:
        md = table(rows, kinds, a.conn_max_age)
        result["table_markdown"] = md
        log(md)
    sc = result.get("step_cost") or {}
    if sc:
        ours = sc.get("usertasks", {}).get("us_per_call", {}).get("step()")
        theirs = sc.get("django-user-tasks (SQLite)", {}).get("us_per_call", {}).get("increment_completed_steps()")
        log("")
        log(f"step(): {ours:.3f} µs/call" if ours else "step(): not measured")
        if ours and theirs:
            log(f"django-user-tasks increment_completed_steps() on SQLite: {theirs:,.0f} µs/call "
                f"({theirs / ours:,.0f}× step())")
    for kind, sc in (result.get("send_cost") or {}).items():
        for who, res in sc.items():
            for form, v in res.items():
                log(f"send cost, {kind}, {who} {form}: {v['queries_per_task']:.2f} queries, "
                    f"{v['writes_per_task']:.2f} writes, {v['broker_round_trips_per_task']:.2f} broker round trips, "
                    f"{v['us_per_task']:,.0f} µs per task")
    for kind, sc in (result.get("scaling") or {}).items():
        for variant, res in sc.items():
            if "ratio" in res:
                cpu = res.get("cpu_ms_per_task") or {}
                log(f"2 processes vs 1, 5 ms sleep tasks, {kind}, {variant}: {res[1]:.0f} -> {res[2]:.0f} tasks/s "
                    f"(median of the paired runs' ratios {res['ratio']:.2f}×: "
                    f"{', '.join(f'{x:.2f}' for x in res['ratios'])}; CPU per task "
                    f"{cpu.get(1, 0):.2f} / {cpu.get(2, 0):.2f} ms)")
    os.makedirs(common.RESULTS, exist_ok=True)
    path = os.path.join(common.RESULTS, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    log(f"\nresults: {os.path.relpath(path, ROOT)}  ({result['seconds']:.0f} s, load {result['facts']['loadavg_end']})")
    if rows and not a.no_chart:
        try:
            chart(rows, kinds, a.conn_max_age, a.chart, subtitle(result))
            log(f"chart: {os.path.relpath(a.chart, ROOT)}")
        except ImportError:
            log("chart skipped: matplotlib is not installed (pip install -r bench/requirements.txt)")


if __name__ == "__main__":
    main()
