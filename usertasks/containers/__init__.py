"""Containers: user tasks shown to the user as one task made of many.

A **fan-out** (``task.fan_out(child_actor, items)``) makes the running task the container of the
children it starts; a **pipeline** (``usertasks.pipeline(user, stages)``) is a container whose
children (its stages) run one after the other.  A container's row holds aggregate counters
(``children_total``, ``children_succeeded``, ``children_failed``, ``children_canceled``,
``children_skipped``, ``children_retried``) and aggregate steps, and it ends exactly once, when
its last child ends (and, for a fan-out, its own body has returned).

The parts, from the rules to their use:

* :mod:`~usertasks.containers.counting`: adding a child's end to its container's counters (one
  ``UPDATE ... RETURNING``, O(1) whatever the number of children) and what follows it (a
  pipeline's next stage, a fail-fast cancel);
* :mod:`~usertasks.containers.completion`: the container's outcome once every child has ended,
  and its completion callback;
* :mod:`~usertasks.containers.start`: ``fan_out()``, writing and sending the children in chunks;
* :mod:`~usertasks.containers.pipelines`: ``pipeline()``;
* :mod:`~usertasks.containers.cancel`: canceling a container and what it holds.

The state changes themselves (a child counted, the container's end, children canceled) are
``usertasks.transitions``' part: the first two modules are the rules it applies, the last three
call it.  This package's ``__init__`` imports none of them, so that ``transitions`` can import
the rules without importing the modules that call it.
"""
