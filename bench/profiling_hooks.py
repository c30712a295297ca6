"""Instrumentation loaded into a worker process by ``actors_bench`` when ``BENCH_PROFILE`` is
set (``bench/profile.py`` does that).  Nothing here changes what the worker does; it only
measures:

* wall time spent in every middleware hook (``before_process_message``, ``after_process_message``,
  ``after_ack``, ...), per middleware class;
* the status writer (``usertasks.writer``): batches, changes per batch, time per batch, and how
  long worker threads wait for their final state to commit;
* a cProfile of every worker thread and of the writer thread.

At worker shutdown everything is written to ``<dir>/hooks-<pid>.json`` and
``<dir>/worker-<pid>.pstats`` / ``<dir>/writer-<pid>.pstats``.
"""

import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict


def _import_cprofile():
    """``cProfile`` imports the standard library's ``profile``, which ``bench/profile.py``
    shadows when ``bench/`` is on ``sys.path``: import it with ``bench/`` out of the way."""
    here = os.path.dirname(os.path.abspath(__file__))
    mod = sys.modules.get("profile")
    if mod is not None and os.path.dirname(os.path.abspath(getattr(mod, "__file__", "") or "")) == here:
        del sys.modules["profile"]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != here]
    try:
        import cProfile
    finally:
        sys.path[:] = saved
    return cProfile


cProfile = _import_cprofile()

from dramatiq.middleware import Middleware

HOOKS = ("before_process_message", "after_process_message", "after_skip_message", "before_ack", "after_ack",
         "before_nack", "after_nack", "before_enqueue", "after_enqueue")

_lock = threading.Lock()
_timings = defaultdict(lambda: [0, 0.0])  # "Class.hook" -> [calls, seconds]
_profiles = {"worker": [], "writer": []}
_local = threading.local()


def _add(key, seconds):
    with _lock:
        t = _timings[key]
        t[0] += 1
        t[1] += seconds


def _timed(key, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(key, time.perf_counter() - t0)

    return wrapper


def _thread_profile(kind):
    prof = getattr(_local, "prof", None)
    if prof is None:
        prof = _local.prof = cProfile.Profile()
        with _lock:
            _profiles[kind].append(prof)
        prof.enable()
    return prof


class Profiling(Middleware):
    """First in the list: starts a profiler in each worker thread and dumps at shutdown."""

    def __init__(self, outdir):
        self.outdir = outdir

    def before_process_message(self, broker, message):
        if not os.environ.get("BENCH_PROFILE_NO_CPROFILE"):
            _thread_profile("worker")

    def after_worker_shutdown(self, broker, worker):
        self.dump()

    def dump(self):
        import pstats

        pid = os.getpid()
        os.makedirs(self.outdir, exist_ok=True)
        for kind, profiles in _profiles.items():
            if not profiles:
                continue
            stats = None
            for prof in profiles:
                prof.disable()
                stats = pstats.Stats(prof) if stats is None else stats.add(prof)
            stats.dump_stats(os.path.join(self.outdir, f"{kind}-{pid}.pstats"))
        with open(os.path.join(self.outdir, f"hooks-{pid}.json"), "w") as fh:
            json.dump({k: {"calls": v[0], "seconds": v[1]} for k, v in _timings.items()}, fh, indent=1)


def install(broker, outdir):
    for m in list(broker.middleware):
        for hook in HOOKS:
            if getattr(type(m), hook, None) is not getattr(Middleware, hook):  # overridden: it does something
                setattr(m, hook, _timed(f"{type(m).__name__}.{hook}", getattr(m, hook)))
    broker.middleware.insert(0, Profiling(outdir))
    _instrument_writer()
    _instrument_actors(broker)


def _instrument_actors(broker):
    for name in broker.get_declared_actors():
        actor = broker.get_actor(name)
        actor.fn = _timed(f"actor {name}", actor.fn)


def _instrument_writer():
    try:
        from usertasks import transitions, writer
        from usertasks.middleware import tracking
    except ImportError:
        return
    run, write = writer.Writer._run, writer.Writer._write

    def _run(self):
        if not os.environ.get("BENCH_PROFILE_NO_CPROFILE"):
            _thread_profile("writer")
        return run(self)

    def _write(self, ops, dirty, beating):
        t0 = time.perf_counter()
        try:
            return write(self, ops, dirty, beating)
        finally:
            dt = time.perf_counter() - t0
            with _lock:
                t = _timings["writer: batch (one transaction)"]
                t[0] += 1
                t[1] += dt
                for op in ops:
                    _timings[f"writer: ops of kind {op.kind!r}"][0] += 1
                _timings["writer: progress rows"][0] += len(dirty)
                _timings["writer: heartbeat rows"][0] += len(beating)

    writer.Writer._run = _run
    writer.Writer._write = _write
    wait = transitions.Change.wait

    def op_wait(self, timeout=None):
        t0 = time.perf_counter()
        try:
            return wait(self, timeout)
        finally:
            _add(f"worker thread waits for its {self.kind!r} write", time.perf_counter() - t0)

    transitions.Change.wait = op_wait
    tracking.UserTaskTracking.end = staticmethod(_timed("UserTaskTracking.end (incl. the wait)",
                                                        tracking.UserTaskTracking.end))
