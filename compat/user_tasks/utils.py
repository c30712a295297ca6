"""Conversions between Celery's task message protocols.

Protocol 2 (Celery's default) sends ``body = (args, kwargs, embed)`` with the task's id, name and
group in the message headers; protocol 1 sends one dict.  ``proto2_to_proto1`` gives the
protocol 1 dict of a protocol 2 message, with a chain (``embed["chain"]``) as a callback, the
way protocol 1 carries it.  (Tracking itself reads both protocols directly: see
``user_tasks.tracking.parse``.)
"""

from celery import chain

__all__ = ["extract_proto2_embed", "extract_proto2_headers", "proto2_to_proto1"]


def proto2_to_proto1(body, headers):
    """The protocol 1 body of the protocol 2 message ``(body, headers)``."""
    args, kwargs, embed = body
    parts = extract_proto2_embed(**embed)
    remaining = parts.pop("chain")
    converted = extract_proto2_headers(**headers)
    converted.update(args=args, kwargs=kwargs)
    converted.update(parts)
    if remaining:
        converted["callbacks"] = [*converted["callbacks"], chain(remaining)]
    return converted


def extract_proto2_headers(id, retries, eta, expires, group, timelimit, task, **ignored):
    """The protocol 1 fields carried by protocol 2 headers (a group id becomes ``taskset``)."""
    return {
        "id": id,
        "task": task,
        "retries": retries,
        "eta": eta,
        "expires": expires,
        "utc": True,
        "taskset": group,
        "timelimit": timelimit,
    }


def extract_proto2_embed(callbacks=None, errbacks=None, task_chain=None, chord=None, **ignored):
    """The protocol 1 fields carried by a protocol 2 body's ``embed`` (``task_chain`` becomes ``chain``)."""
    return {
        "callbacks": callbacks or [],
        "errbacks": errbacks or [],
        "chain": task_chain,
        "chord": chord,
    }
