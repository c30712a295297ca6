"""Shared plumbing of the benchmarks: environments (settings), Redis, databases, worker
processes and the peers' virtualenv.

Nothing here imports Django: the orchestrator (``bench/run.py``) only starts processes, each
configured through environment variables read by ``bench/settings_bench.py`` (Dramatiq
variants) or ``bench/peers/settings_peers.py`` (Celery + django-user-tasks).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PEERS = os.path.join(BENCH, "peers")
PEERS_VENV = os.path.join(BENCH, ".venv-peers")
RESULTS = os.path.join(BENCH, "results")

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")

QUEUE = "default"


# -- settings ----------------------------------------------------------------------------------


class Database:
    """One benchmark database: a SQLite file or a PostgreSQL database that we create and drop."""

    def __init__(self, kind, name):
        self.kind = kind
        self.name = name

    @classmethod
    def sqlite(cls, directory, stem):
        return cls("sqlite", os.path.join(directory, f"{stem}.sqlite3"))

    @classmethod
    def postgres(cls, name):
        return cls("postgres", name)

    def env(self):
        return {"BENCH_DB": self.kind, "BENCH_DB_NAME": self.name, "BENCH_PG_HOST": PG_HOST,
                "BENCH_PG_PORT": str(PG_PORT), "BENCH_PG_USER": PG_USER}

    def create(self):
        if self.kind == "postgres":
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', f'CREATE DATABASE "{self.name}"')
        elif os.path.exists(self.name):
            os.remove(self.name)
        return self

    def drop(self):
        if self.kind == "postgres":
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            for suffix in ("", "-journal", "-wal", "-shm"):
                if os.path.exists(self.name + suffix):
                    os.remove(self.name + suffix)


def _pg_admin(*statements):
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True,
                         connect_timeout=5) as conn:
        for sql in statements:
            conn.execute(sql)


def postgres_available():
    try:
        _pg_admin("SELECT 1")
        return True
    except Exception:
        return False


def bench_env(db, *, variant, redis_url, conn_max_age=0, extra=None):
    """Environment of a process using ``settings_bench`` (driver or worker)."""
    env = dict(os.environ)
    env.update(db.env())
    env.update({
        "DJANGO_SETTINGS_MODULE": "settings_bench",
        "BENCH_VARIANT": variant,
        "BENCH_CONN_MAX_AGE": str(conn_max_age),
        "BENCH_REDIS_URL": redis_url,
        "PYTHONPATH": os.pathsep.join([BENCH, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def peers_env(db, *, redis_url, conn_max_age=0, extra=None):
    """Environment of a process of the peers' project (Celery + the real django-user-tasks).

    ``PYTHONPATH`` holds only ``bench/peers``: the repository root (and with it this project's
    own ``compat/user_tasks``) must not be importable there."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env.update(db.env())
    env.update({
        "DJANGO_SETTINGS_MODULE": "settings_peers",
        "BENCH_CONN_MAX_AGE": str(conn_max_age),
        "BENCH_REDIS_URL": redis_url,
        "PYTHONPATH": PEERS,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


# -- Redis ---------------------------------------------------------------------------------------


def start_redis():
    """A private Redis on a free port (``usertasks.devredis``); call ``.stop()`` when done."""
    sys.path.insert(0, ROOT)
    from usertasks.devredis import RedisServer

    return RedisServer().start()


# -- processes -----------------------------------------------------------------------------------


class Worker:
    """A worker process group (``dramatiq`` or ``celery``) started in its own session, so that
    stopping it stops its children too."""

    def __init__(self, argv, env, cwd=BENCH, log=None):
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log = log
        self.proc = None

    @classmethod
    def dramatiq(cls, env, *, processes=1, threads=8, modules=("actors_bench",), log=None):
        argv = [sys.executable, "-m", "dramatiq", "django_dramatiq.setup", *modules,
                "--processes", str(processes), "--threads", str(threads), "--worker-shutdown-timeout", "10000"]
        return cls(argv, env, log=log)

    @classmethod
    def celery(cls, env, *, threads=8, log=None):
        argv = [peers_python(), "-m", "celery", "-A", "celery_app", "worker", "--pool", "threads",
                "--concurrency", str(threads), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-Q", "bench"]
        return cls(argv, env, cwd=PEERS, log=log)

    def start(self):
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        if not self.alive():
            return
        try:
            # The main process forwards the signal to its children: a second SIGTERM sent to
            # the whole group would make Dramatiq's worker processes exit without shutting down.
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_json(argv, env, cwd=BENCH, timeout=3600, log=None):
    """Run a helper process and return the JSON object it prints on its last stdout line."""
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    if log:
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv)} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def emit(obj):
    """Print a result object for :func:`run_json`."""
    print(json.dumps(obj), flush=True)


class CpuMeter:
    """CPU seconds spent since it was made (Linux ``/proc``; empty elsewhere): ``busy`` by the
    whole machine (every core, every process, and ``steal``: time the hypervisor gave the
    virtual CPUs to someone else, which a shared VM counts as busy), ``workers`` by the worker
    processes (the session ``session`` started for them), ``driver`` by this process (the
    sending), ``servers`` by the PostgreSQL and Redis processes alive at both reads.  ``ours``
    is workers + driver + servers: the work the run cost, whatever else the machine did."""

    SERVERS = ("postgres", "redis-server")

    def __init__(self, session):
        self.session = session
        self.start = self.read()

    def read(self):
        if not os.path.exists("/proc/stat"):
            return {}
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        workers, servers = 0, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            used = int(fields[11]) + int(fields[12])  # utime, stime
            if int(fields[3]) == self.session:  # session id
                workers += used
            elif name in self.SERVERS:
                servers[entry] = used
        own = os.times()
        steal = ticks[7] if len(ticks) > 7 else 0
        return {"busy": (sum(ticks) - ticks[3] - ticks[4]) / tick, "steal": steal / tick, "workers": workers / tick,
                "driver": own.user + own.system, "servers": servers, "tick": tick}

    def since(self):
        now = self.read()
        if not now:
            return {}
        out = {k: round(now[k] - self.start[k], 2) for k in ("busy", "steal", "workers", "driver")}
        # Server processes alive at both reads (PostgreSQL backends of the workers, Redis).
        out["servers"] = round(sum(v - self.start["servers"].get(pid, v) for pid, v in now["servers"].items())
                               / now["tick"], 2)
        out["ours"] = round(out["workers"] + out["driver"] + out["servers"], 2)
        return out


def stolen_seconds():
    """CPU seconds the hypervisor has given this VM's virtual CPUs to others since boot (the
    ``steal`` column of ``/proc/stat``; 0 where there is none).  On a shared VM the same run can
    take twice as long when its neighbours are busy: the benchmarks record how much was stolen
    during each run, so a slow run can be told from a slow code path."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        return int(fields[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def wait_until(predicate, timeout, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- the peers' virtualenv ------------------------------------------------------------------------


def peers_python():
    return os.path.join(PEERS_VENV, "bin", "python")


def ensure_peers_venv(python=None, quiet=True):
    """Create ``bench/.venv-peers`` with Celery and the real django-user-tasks (from
    ``bench/peers/requirements.txt``) unless it is already up to date."""
    req = os.path.join(PEERS, "requirements.txt")
    stamp = os.path.join(PEERS_VENV, ".installed")
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(req):
        return peers_python()
    python = python or os.environ.get("BENCH_PEERS_PYTHON") or sys.executable
    print(f"== creating {os.path.relpath(PEERS_VENV, ROOT)} (Celery + django-user-tasks)", flush=True)
    subprocess.run([python, "-m", "venv", "--clear", PEERS_VENV], check=True)
    q = ["--quiet"] if quiet else []
    subprocess.run([peers_python(), "-m", "pip", "install", *q, "--upgrade", "pip"], check=True)
    subprocess.run([peers_python(), "-m", "pip", "install", *q, "-r", req], check=True)
    with open(stamp, "w") as fh:
        fh.write(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return peers_python()


def tmpdir():
    return tempfile.mkdtemp(prefix="usertasks-bench-")
