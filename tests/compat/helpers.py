"""Helpers of the compatibility tests (Celery workers, their side effects)."""

from ..helpers import wait_for


def side_effects(redis, label, what="ran"):
    return int(redis.get(f"side-effect:compat:{label}:{what}") or 0)


def wait_state(status, states, timeout=60):
    states = (states,) if isinstance(states, str) else tuple(states)

    def reached():
        status.refresh_from_db()
        return status.state in states

    wait_for(reached, timeout, interval=0.05, message=f"{status.name} to reach {states} (is {status.state})")
    return status
