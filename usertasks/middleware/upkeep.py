"""Upkeep without cron: the workers run the reaper and the purge themselves.

Every worker process has an :class:`Upkeep` thread, owned by :class:`UserTaskUpkeep` (as
Dramatiq's ``TimeLimit`` owns its timeout manager): started when the worker has booted, stopped
when it shuts down.  One of them at a time *leads*: it holds a lease in Redis (``SET NX PX`` with
a token of its own, renewed every third of its life, released by a compare-and-delete:
redis-py's ``Lock``), and runs each job when it is due:

* ``reap`` (:func:`usertasks.reaper.reap`) every ``USERTASKS["REAP_EVERY"]`` seconds;
* ``purge`` (:func:`usertasks.purge.purge`) every ``USERTASKS["PURGE_EVERY"]`` seconds.

``None`` turns a job off.  When each job last started is kept in Redis (by the server's clock),
so a new leader goes on with the schedule instead of starting over.  A leader that dies keeps its
lease only until the lease expires (``USERTASKS["UPKEEP_LOCK_TTL"]`` seconds): the others wait
for exactly that and one of them takes over, and runs at once the job the dead leader had not
finished.  A job runs in a thread of its own while the leader keeps renewing its lease.

The Redis is the abort flags' (``USERTASKS["REDIS_URL"]``, or the broker's when it is a
``RedisBroker``); keys are under the abort flags' prefix (``usertasks:<hash of the database>:``),
so sites sharing one Redis keep their own upkeep:

* ``<prefix>upkeep:lock``: the lease (its value: the leader's ``host:pid:nonce``);
* ``<prefix>upkeep:<job>``: a hash with ``started``, ``finished`` (server time, seconds),
  ``by`` (who ran it), ``runs`` (how many runs ended), ``error`` (of the last run, or empty).

Without Redis (a RabbitMQ broker and no ``REDIS_URL``), the upkeep is off and the worker says so
once: run ``usertasks_reap`` and ``usertasks_purge`` from a scheduler instead.
"""

import logging
import os
import random
import socket
import threading
import time
import uuid

from dramatiq.middleware import Middleware

from ..conf import app_settings
from ..process import PerProcess

logger = logging.getLogger("usertasks.upkeep")

__all__ = ["JOBS", "Upkeep", "UserTaskUpkeep", "get_upkeep"]


def _reap():
    from ..reaper import reap

    return reap()


def _purge():
    from ..purge import purge

    return purge()


#: Job name -> (the ``USERTASKS`` key of its period, what it runs).
JOBS = {"reap": ("REAP_EVERY", _reap), "purge": ("PURGE_EVERY", _purge)}

#: Seconds between two tries to reach a Redis that failed, or to look at settings that turn every
#: job off.
RETRY_AFTER = 5.0


class Upkeep:
    """The upkeep thread of one worker process; see the module docstring."""

    def __init__(self):
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = None
        self._lease = None  # redis-py Lock, while this process leads
        self._client = None
        self._prefix = None
        self._warned = False
        self._following = None  # the leader this process last saw
        self._job = None  # the thread of the job running, or that ran last

    @property
    def leading(self):
        return self._lease is not None

    # -- the thread ----------------------------------------------------------------------------

    def start(self):
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="usertasks-upkeep", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=5):
        """Stop the thread and give the lease up (unless a job still runs: its lease then
        expires by itself)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        job = self._job
        if (thread is None or not thread.is_alive()) and (job is None or not job.is_alive()):
            self._release()

    def _run(self):
        while not self._stop.is_set():
            try:
                wait = self.tick()
            except Exception as exc:
                logger.warning("usertasks upkeep: %s; trying again in %gs", exc, RETRY_AFTER)
                self._release()  # (if Redis still answers; else the lease expires by itself)
                wait = RETRY_AFTER
            self._stop.wait(wait)

    # -- one round -----------------------------------------------------------------------------

    def jobs(self):
        """``[(name, period in seconds, function)]`` of the jobs turned on."""
        jobs = []
        for name, (key, func) in JOBS.items():
            period = getattr(app_settings, key)
            if period is not None:
                jobs.append((name, max(float(period), 0.1), func))
        return jobs

    def tick(self):
        """Lead or follow; as the leader, run the jobs that are due.  Returns the seconds to wait
        before the next round."""
        jobs = self.jobs()
        if not jobs:
            self._release()
            return RETRY_AFTER
        client = self.client()
        if client is None:
            return 60.0
        ttl = float(app_settings.UPKEEP_LOCK_TTL)
        if not self.leading:
            wait = self._try_lead(client, ttl)
            if wait is not None:
                return wait
        elif not self._renew(ttl):
            return 0.0
        now = self._now(client)
        next_due = ttl / 3
        for name, period, func in jobs:
            if self._stop.is_set() or not self.leading:
                break
            due_in = self._due_in(client, name, period, now)
            if due_in <= 0:
                self._run_job(client, name, func, ttl)
                now = self._now(client)
                due_in = period
            next_due = min(next_due, due_in)
        return max(0.0, next_due)

    def _due_in(self, client, name, period, now):
        """Seconds until ``name`` is due (0 or less: now).  A run that another process started
        and never finished (it died, or lost its lease) is due at once."""
        started, finished, by = client.hmget(self._key(name), "started", "finished", "by")
        if started is None:
            return 0.0
        if _text(by) != self.token and (finished is None or float(finished) < float(started)):
            return 0.0
        return period - (now - float(started))

    def _try_lead(self, client, ttl):
        """Take the lease if it is free: ``None`` when this process leads now, else the seconds
        until the current lease expires (plus a little, so followers do not all try at once)."""
        lease = client.lock(self._key("lock"), timeout=ttl, blocking=False, thread_local=False)
        if lease.acquire(blocking=False, token=self.token):
            self._lease = lease
            self._following = None
            logger.info("usertasks upkeep: %s leads", self.token)
            return None
        holder, pttl = client.pipeline(transaction=False).get(self._key("lock")).pttl(self._key("lock")).execute()
        holder = _text(holder)
        if holder != self._following:
            self._following = holder
            logger.debug("usertasks upkeep: %s follows %s", self.token, holder)
        # PTTL: -2 when the lease is gone by now (try again at once), -1 for a key without expiry
        # (not ours to remove: look again later).
        left = pttl / 1000 if pttl > 0 else (ttl / 3 if pttl == -1 else 0.0)
        return min(left, ttl) + random.uniform(0.01, 0.1)

    def _renew(self, ttl):
        lease = self._lease
        if lease is None:
            return False
        try:
            lease.extend(ttl, replace_ttl=True)
            return True
        except Exception as exc:  # expired and taken by another (a long pause), or Redis failed
            logger.warning("usertasks upkeep: %s lost the lead (%s)", self.token, exc)
            self._lease = None
            return False

    def _release(self):
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                lease.release()  # only if still ours (compare-and-delete)
            except Exception as exc:
                logger.info("usertasks upkeep: could not release the lead: %s", exc)

    def _run_job(self, client, name, func, ttl):
        """Run ``func`` in a thread of its own, renewing the lease meanwhile; record the run."""
        key = self._key(name)
        client.hset(key, mapping={"started": repr(self._now(client)), "by": self.token})
        outcome = {}

        def target():
            from django.db import connections

            try:
                outcome["result"] = func()
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                connections.close_all()  # this thread's connections

        logger.debug("usertasks upkeep: %s runs %s", self.token, name)
        job = self._job = threading.Thread(target=target, name=f"usertasks-upkeep-{name}", daemon=True)
        job.start()
        renew_at = time.monotonic() + ttl / 3
        while job.is_alive() and not self._stop.is_set():
            job.join(0.2)
            if self.leading and job.is_alive() and time.monotonic() >= renew_at:
                # Lost, another worker may run the next jobs; this run goes on to its end (the
                # reaper and the purge are safe to run twice at once).
                self._renew(ttl)
                renew_at = time.monotonic() + ttl / 3
        if job.is_alive():
            return  # the worker is stopping; the lease expires after the job
        error = outcome.get("error")
        if error is not None:
            logger.error("usertasks upkeep: %s failed: %r", name, error)
        else:
            logger.info("usertasks upkeep: %s: %s", name, outcome.get("result"))
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping={"finished": repr(self._now(client)), "error": "" if error is None else repr(error)})
        pipe.hincrby(key, "runs", 1)
        pipe.execute()

    # -- Redis ---------------------------------------------------------------------------------

    def client(self):
        """The Redis client of the upkeep, or ``None`` (said once) when there is none."""
        if self._client is None:
            from ..abort.redis import _client, key_namespace
            from ..exceptions import ConfigurationError

            try:
                self._client = _client()
            except ConfigurationError:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "usertasks upkeep is off: it needs Redis (a RedisBroker or USERTASKS['REDIS_URL']); "
                        "run usertasks_reap and usertasks_purge from a scheduler instead"
                    )
                return None
            self._prefix = f"{key_namespace()}upkeep:"
        return self._client

    def _key(self, name):
        return f"{self._prefix}{name}"

    @staticmethod
    def _now(client):
        """The Redis server's time: one clock for every host."""
        seconds, micros = client.time()
        return seconds + micros / 1e6


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


_upkeeps = PerProcess(Upkeep)


def get_upkeep():
    """This process's upkeep (not started)."""
    return _upkeeps.get()


class UserTaskUpkeep(Middleware):
    """Owns the :class:`Upkeep` thread of each worker process (none on a ``StubBroker``: tests
    run the reaper and the purge themselves)."""

    def after_worker_boot(self, broker, worker):
        from dramatiq.brokers.stub import StubBroker

        if isinstance(broker, StubBroker):
            return
        get_upkeep().start()

    def before_worker_shutdown(self, broker, worker):
        upkeep = _upkeeps.current()
        if upkeep is not None:
            upkeep.stop()
