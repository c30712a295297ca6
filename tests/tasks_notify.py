"""Actors and a channel for the notification tests (tests/test_notify.py)."""

import os
import signal
import threading

import redis as redis_lib

from usertasks import user_task
from usertasks.notify import Channel
from usertasks.signals import task_finished


@user_task(name="Notify {label}", max_retries=0)
def notify_me(task, ok=True, label=""):
    task.step()
    if not ok:
        raise ValueError("it broke")


class RecordingChannel(Channel):
    """Records, in the test Redis, each notice it is given and the thread that delivered it."""

    label = "recorder"

    def __init__(self):
        self.redis = redis_lib.Redis.from_url(os.environ["USERTASKS_TEST_REDIS_URL"])

    def send(self, notice):
        key = f"side-effect:notified:{notice.status.uuid}"
        self.redis.rpush(key, f"{notice.state}|{threading.current_thread().name}|{notice.attempt}")


def _die_after_commit(sender, status, state, **kwargs):
    """``task_finished`` follows the commit of a final state: the worker process dies there,
    before anything else of that run happens."""
    if kwargs.get("parent_id") is None:
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("USERTASKS_TEST_DIE_AFTER_COMMIT") == "1":
    task_finished.connect(_die_after_commit, weak=False)
