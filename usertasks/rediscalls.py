"""Calling Lua scripts on Redis with little Python per argument.

A worker calls its scripts (fetch and claim, acknowledge a batch, enqueue a chunk) thousands of
times a second, some with a thousand arguments.  Through redis-py, each call checks a connection
out of the pool and polls it, and packs every argument in Python (about 4 µs each on a busy
process); here the command is packed in one ``bytes.join`` and sent on a connection the calling
thread keeps for itself (per process and per connection pool: a forked child makes its own).

Every connection usertasks opens to Redis has bounded waits (:func:`bounded_kwargs`): a read
and connect timeout (``USERTASKS["REDIS_SOCKET_TIMEOUT"]``, ``["REDIS_CONNECT_TIMEOUT"]``)
and TCP keepalives, where the client's own options set none, so a Redis that stops answering
makes a call fail (and its caller retry) instead of hanging a thread for ever.
"""

import hashlib
import os
import threading
import weakref
from pathlib import Path

import redis

__all__ = ["Script", "bounded", "bounded_kwargs", "pack"]

_local = threading.local()


def pack(args):
    """The Redis protocol form of the command ``args`` (``bytes``, ``str`` or ``int`` each)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is not bytes:
            arg = arg.encode() if type(arg) is str else str(arg).encode()
        append(b"$%d\r\n" % len(arg))
        append(arg)
        append(b"\r\n")
    return b"".join(parts)


def bounded_kwargs(kwargs, connection_class=None):
    """Connection keyword arguments ``kwargs`` with usertasks' Redis timeouts where they have
    none (``socket_timeout``, ``socket_connect_timeout``) and, over TCP, keepalives."""
    from .conf import app_settings

    out = dict(kwargs)
    for key, setting in (
        ("socket_timeout", "REDIS_SOCKET_TIMEOUT"),
        ("socket_connect_timeout", "REDIS_CONNECT_TIMEOUT"),
    ):
        value = getattr(app_settings, setting)
        if out.get(key) is None and value is not None:
            out[key] = float(value)
    if connection_class is None or issubclass(connection_class, redis.connection.Connection):
        out.setdefault("socket_keepalive", True)
        if not out["socket_keepalive"]:
            out["socket_keepalive"] = True
    return out


_bounded: "weakref.WeakKeyDictionary[redis.ConnectionPool, redis.Redis]" = weakref.WeakKeyDictionary()
_bounded_lock = threading.Lock()


def bounded(client):
    """A client on the same server as ``client``, with :func:`bounded_kwargs` (one per pool of
    ``client``, kept while that pool lives)."""
    pool = client.connection_pool
    with _bounded_lock:
        found = _bounded.get(pool)
        if found is None:
            kwargs = bounded_kwargs(pool.connection_kwargs, pool.connection_class)
            found = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
            _bounded[pool] = found
        return found


def connection(client):
    """A connection to ``client``'s server that belongs to the calling thread (made on first use,
    again after a fork or after an error dropped it)."""
    conns = getattr(_local, "conns", None)
    if conns is None or _local.pid != os.getpid():
        conns = _local.conns = weakref.WeakKeyDictionary()  # pool -> connection
        _local.pid = os.getpid()
    pool = client.connection_pool
    conn = conns.get(pool)
    if conn is None:
        conn = conns[pool] = pool.connection_class(**bounded_kwargs(pool.connection_kwargs, pool.connection_class))
    return conn


def _drop(client):
    conn = (getattr(_local, "conns", None) or {}).pop(client.connection_pool, None)
    if conn is not None:
        conn.disconnect()


class Script:
    """A Lua script, run with ``script(client, keys, args)``: ``EVALSHA`` on the thread's own
    connection, loading the script when the server does not have it.  Any error drops the
    connection (the next call makes a new one) and is raised as redis-py raises it."""

    def __init__(self, text):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    @classmethod
    def load(cls, module_file, name):
        """The script ``name`` (a ``.lua`` file beside the module whose ``__file__`` is given)."""
        return cls((Path(module_file).parent / name).read_text(encoding="utf-8"))

    def __call__(self, client, keys=(), args=()):
        command = pack(("EVALSHA", self.sha, len(keys), *keys, *args))
        try:
            conn = connection(client)
            try:
                conn.send_packed_command([command], check_health=False)
                return conn.read_response()
            except redis.exceptions.NoScriptError:
                conn.send_command("SCRIPT", "LOAD", self.text, check_health=False)
                conn.read_response()
                conn.send_packed_command([command], check_health=False)
                return conn.read_response()
        except BaseException:
            _drop(client)
            raise
