"""The abort poller: its own thread, owned by UserTaskAbort, reading the flags of the running
tasks once per interval."""

import pytest

from usertasks.abort import get_backend

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_abort_poller_reads_the_flags_once_per_interval(redis):
    """However often the poller ticks, the flags are read at most once per poll interval, and a
    raised flag reaches the running task on the next read."""
    import time

    from usertasks.context import TaskContext
    from usertasks.middleware.abort import AbortPoller
    from usertasks.writer import get_writer

    backend = get_backend()
    reads = []
    flagged = backend.flagged
    backend.flagged = lambda ids: reads.append(list(ids)) or flagged(ids)
    ctx = TaskContext(status_id=10**9 + 7, message_id="m", actor_name="a")
    writer = get_writer()
    writer.register(ctx)
    try:
        poller = AbortPoller()  # its thread is not started: the test ticks it
        now = time.monotonic()
        for _ in range(50):
            poller.tick(now)
        assert reads == [[ctx.status_id]]
        backend.set(ctx.status_id)
        poller.tick(now + backend.poll_interval)
        assert len(reads) == 2 and ctx.abort_requested
    finally:
        writer.unregister(ctx)
        del backend.flagged
        backend.clear([ctx.status_id])


def test_the_abort_poller_thread_reads_every_interval_while_a_task_runs(redis):
    """The poller's own thread reads the flags once per interval while a tracked task runs (a
    late read now and then on a busy machine, never one interval in two), and stops reading
    once none does."""
    import time

    from usertasks.context import TaskContext
    from usertasks.middleware.abort import IDLE_GRACE, AbortPoller
    from usertasks.writer import get_writer

    from ..helpers import wait_for

    backend = get_backend()
    reads = []
    flagged = backend.flagged
    backend.flagged = lambda ids: reads.append(time.monotonic()) or flagged(ids)
    poller = AbortPoller().start()
    writer = get_writer()
    ctx = TaskContext(status_id=10**9 + 11, message_id="m", actor_name="a")
    try:
        writer.register(ctx)
        poller.wake()
        wait_for(lambda: len(reads) >= 41, timeout=30, message="40 intervals of reads")
        writer.unregister(ctx)
        stopped = len(reads)
        wait_for(lambda: poller.polls == len(reads) and time.monotonic() - reads[-1] > IDLE_GRACE / 4,
                 timeout=10, message="the poller to notice there is nothing left to watch")
        assert len(reads) <= stopped + 1
    finally:
        writer.unregister(ctx)
        poller.stop()
        del backend.flagged
    gaps = sorted(b - a for a, b in zip(reads[:41], reads[1:41]))
    assert gaps[len(gaps) // 2] < 1.2 * backend.poll_interval, gaps
    assert gaps[int(len(gaps) * 0.9)] < 1.5 * backend.poll_interval, gaps
