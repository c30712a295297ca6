"""Reading Dramatiq's Redis queues: which messages the broker still holds.

The reaper (``usertasks.reaper``) asks this before it calls a task lost: a Pending task whose
message is still queued will run, and an In Progress task whose worker died will run again if its
message is still held (a Redis broker hands the messages of a dead worker to another one).  It
reads, and never writes, the layout Dramatiq's ``dispatch.lua`` documents: ``<namespace>:<queue>.msgs``
holds every message of a queue until it is acknowledged, including those fetched by workers
(live or dead) and not yet acknowledged.  Any Dramatiq ``RedisBroker`` can be read, usertasks'
subclass or not.
"""

import logging
from typing import Any

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker
from dramatiq.common import current_millis, dq_name

logger = logging.getLogger("usertasks.redis")

__all__ = ["held_message_ids", "live_message_ids"]


def live_message_ids(broker, queue_names):
    """Ids of every message ``broker`` still holds for ``queue_names`` (queued, delayed, or
    delivered and not yet acknowledged), or ``None`` when the broker is not a Redis broker."""
    if not isinstance(broker, DramatiqRedisBroker):
        return None
    ids = set()
    for queue in set(queue_names):
        queue = queue or "default"
        for name in (queue, dq_name(queue)):
            for _, data in broker.client.hscan_iter(f"{broker.namespace}:{name}.msgs", count=1000):
                try:
                    ids.add(Message.decode(data).message_id)
                except Exception:  # pragma: no cover - undecodable garbage is not our message
                    logger.debug("usertasks: undecodable message in %s:%s.msgs", broker.namespace, name)
    return ids


def held_message_ids(broker, queue_names):
    """Ids of the messages of ``queue_names`` that a *live* worker has fetched and not yet
    acknowledged (a worker whose Dramatiq heartbeat is younger than the broker's
    ``heartbeat_timeout``: every fetch and acknowledgement of any of its consumers renews it),
    or ``None`` when the broker is not a Redis broker.  Such a worker will finish them: its
    status writes may be held up (a database that stopped answering), but its run is not lost."""
    if not isinstance(broker, DramatiqRedisBroker):
        return None
    client, namespace = broker.client, broker.namespace
    since = current_millis() - int(broker.heartbeat_timeout)
    workers = [
        w.decode() if isinstance(w, bytes) else w
        for w in client.zrangebyscore(f"{namespace}:__heartbeats__", since, "+inf")
    ]
    ids = set()
    for queue in set(queue_names):
        queue = queue or "default"
        for name in (queue, dq_name(queue)):
            redis_ids: set[Any] = set()
            for worker in workers:
                redis_ids.update(client.smembers(f"{namespace}:__acks__.{worker}.{name}"))
            redis_ids_list = sorted(redis_ids)
            for i in range(0, len(redis_ids_list), 1000):
                for data in client.hmget(f"{namespace}:{name}.msgs", redis_ids_list[i : i + 1000]):
                    if not isinstance(data, bytes):
                        continue
                    try:
                        ids.add(Message.decode(data).message_id)
                    except Exception:  # pragma: no cover - undecodable garbage is not our message
                        logger.debug("usertasks: undecodable message in %s:%s.msgs", namespace, name)
    return ids
