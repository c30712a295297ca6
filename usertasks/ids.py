"""Random ids in bulk."""

import os
import uuid

__all__ = ["random_uuids"]


def random_uuids(n):
    """``n`` random (version 4) UUIDs from ONE read of the system's random source.

    ``uuid.uuid4()`` reads it once per UUID, and every such read releases the GIL: a thread
    preparing thousands of tasks while the worker threads of its process keep the GIL busy waits
    to get it back after each one."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i : i + 16], version=4) for i in range(0, 16 * n, 16)]
