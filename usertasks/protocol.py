"""Names shared by the code that sends user tasks and the code that runs them.

A user task's Dramatiq message carries the primary key of its status row in its options, and a
worker marks the ``MessageProxy`` it hands from one of usertasks' hooks to another.  These names
are the whole protocol between the floors: they live here, on the ground floor, so that neither
side has to import the other to agree on them.
"""

__all__ = [
    "ALLOW_FAILURES",
    "CALLBACK_DUE",
    "CHILD_OPTION",
    "CONTAINER_OPTION",
    "DEFERRING_CONSUMER",
    "FAIL_FAST",
    "PARENT_OPTION",
    "PENDING_END",
    "PIPELINE_CLASS",
    "POLICIES",
    "PREFETCH_CLAIM",
    "STATUS_OPTION",
    "WAITING",
    "WAIT_START",
]

# -- message options ---------------------------------------------------------------------------

#: Primary key of the message's status row.  A message without it runs untracked.
STATUS_OPTION = "usertask_id"
#: Primary key of the container of a fan-out child or pipeline stage.
PARENT_OPTION = "usertask_parent"
#: Marks a fan-out child (not a pipeline stage): unless ``USERTASKS["FANOUT_CHILD_EVENTS"]``, its
#: ordinary start and success leave no event.
CHILD_OPTION = "usertask_child"
#: What a container's completion callback receives: the container's primary key.
CONTAINER_OPTION = "usertask_container"

# -- containers --------------------------------------------------------------------------------

#: ``worker`` of a container whose body has returned and that waits for its children (fan-outs
#: after their body, pipelines always): no run of its own, so no heartbeat.
WAITING = "(waiting for children)"
#: Key of a container's fan-out (or pipeline) options while its completion callback is due: set
#: in the transaction that ends the container, removed once the callback is sent.
CALLBACK_DUE = "callback_due"
#: ``task_class`` of pipeline containers.
PIPELINE_CLASS = "usertasks.pipeline"
#: Fan-out policies: end Succeeded with the failures counted, or cancel the rest at the first one.
ALLOW_FAILURES = "allow_failures"
FAIL_FAST = "fail_fast"
POLICIES = (ALLOW_FAILURES, FAIL_FAST)

# -- marks on the MessageProxy of a run (set with setattr, read with vars(): never forwarded) ------

#: The result of the claim a Redis consumer made when it fetched the message.
PREFETCH_CLAIM = "_usertasks_claim"
#: Whether the body must wait until the run's start is stored (set by the abort middleware, read
#: by the tracking middleware).
WAIT_START = "_usertasks_wait_start"
#: The writer's change holding the run's end, until the message is acknowledged (set by the
#: tracking middleware, read by the consumer that acknowledges it).
PENDING_END = "_usertasks_pending_end"
#: The consumer that handed the message out, when it can acknowledge after a commit
#: (``usertasks.redis``).
DEFERRING_CONSUMER = "_usertasks_consumer"
