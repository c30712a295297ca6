"""``manage.py usertasks_notify``: deliver the notifications of finished tasks now."""

import time

from django.core.management.base import BaseCommand

from usertasks.notify import Deliverer, drain


class Command(BaseCommand):
    help = (
        "Deliver every notification that is due (the outbox of finished tasks) and exit; with "
        "--forever, keep delivering until interrupted (for sites that set "
        'USERTASKS["NOTIFY_DELIVERY"] = False and deliver from a process of their own).'
    )

    def add_arguments(self, parser):
        parser.add_argument("--forever", action="store_true", help="Keep delivering until interrupted.")

    def handle(self, *args, forever=False, **options):
        if not forever:
            self.stdout.write(f"Delivered: {drain()} notification(s) taken")
            return
        deliverer = Deliverer().start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            deliverer.stop()
