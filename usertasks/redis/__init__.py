"""usertasks' one seam into Dramatiq's Redis broker.

Everything in usertasks that knows how Dramatiq keeps its queues in Redis lives in this package,
and reaches Dramatiq only through the extension points it documents: a broker subclass,
:class:`RedisBroker` (its ``consumer_class``), and middleware hooks.  No Dramatiq object has a
method replaced or its class changed.

================  =====================================================================
module            what it does
================  =====================================================================
``broker``        :class:`RedisBroker`: chunks of messages in one script call, wake-ups
``consumer``      its consumer: fetch and claim in one round trip, waiting for room,
                  acknowledgements handed to the acker
``acks``          the acker: acknowledgements after the commit, many in one round trip
``wakeup``        idle consumers listening for sends instead of sleeping
``queues``        what the broker still holds (for the reaper)
================  =====================================================================

The Lua scripts (``enqueue.lua``, ``fetch.lua``, ``ack.lua``) each mirror a command of
Dramatiq's ``dispatch.lua``; a test runs both on the same data and compares Redis afterwards,
against the installed Dramatiq (tox runs it on Dramatiq 1.17 and 2.x).  ``docs/architecture.md``
tells what the fast path changes.
"""

from .broker import RedisBroker
from .consumer import Consumer

__all__ = ["Consumer", "RedisBroker"]
