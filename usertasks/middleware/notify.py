"""Delivers the notifications of finished tasks from a thread of each worker process."""

import logging

from dramatiq.middleware import Middleware

from ..conf import app_settings
from ..notify import Deliverer
from ..writer import get_writer

logger = logging.getLogger("usertasks.middleware")


class UserTaskNotifications(Middleware):
    """Owns the worker process's deliverer (``usertasks.notify.Deliverer``): started once the
    process has booted, when ``USERTASKS["NOTIFY_DELIVERY"]`` is on and channels are
    configured; stopped when the worker shuts down.  Notifications are thus sent from a thread
    of their own, never from a thread that runs tasks."""

    def __init__(self):
        self.deliverer = None

    def after_process_boot(self, broker):
        if not app_settings.NOTIFY_DELIVERY or not app_settings.NOTIFIERS:
            return
        self.deliverer = Deliverer(busy=lambda: bool(get_writer().running())).start()

    def before_worker_shutdown(self, broker, worker):
        deliverer, self.deliverer = self.deliverer, None
        if deliverer is not None:
            deliverer.stop()
