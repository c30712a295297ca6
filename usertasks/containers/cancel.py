"""Canceling a container: ``status.cancel()`` on a fan-out or a pipeline.

The container itself is canceled as any task is (``usertasks.cancel``); then what it holds:
the children that have not started are canceled at once (one UPDATE, or for a pipeline the
stages that never ran are skipped), the running ones are asked to stop at their next
``step()``, and the container ends Canceled with the last of them
(``usertasks.transitions.cancel_children``).
"""

from .. import transitions

__all__ = ["cancel_contents"]


def cancel_contents(status, *, by=None):
    """Cancel what container ``status`` holds, after the container's own cancel took effect.
    ``status`` is refreshed; its ``cancel_outcome`` is kept.  Returns how many children were
    canceled at once."""
    outcome = getattr(status, "cancel_outcome", None)
    n = transitions.cancel_children(status, by=by if getattr(by, "pk", None) else None)
    status.refresh_from_db()
    if outcome is not None:
        status.cancel_outcome = outcome
    return n
