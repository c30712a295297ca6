"""Calling Lua scripts on Redis with little Python per argument.

A worker calls its scripts (fetch and claim, acknowledge a batch, enqueue a chunk) thousands of
times a second, some with a thousand arguments.  Through redis-py, each call checks a connection
out of the pool and polls it, and packs every argument in Python (about 4 µs each on a busy
process); here the command is packed in one ``bytes.join`` and sent on a connection the calling
thread keeps for itself (per process and per connection pool: a forked child makes its own).
"""

import hashlib
import os
import threading
import weakref
from pathlib import Path

import redis

__all__ = ["Script", "pack"]

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
        conn = conns[pool] = pool.connection_class(**pool.connection_kwargs)
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
                client.script_load(self.text)
                conn.send_packed_command([command], check_health=False)
                return conn.read_response()
        except BaseException:
            _drop(client)
            raise
