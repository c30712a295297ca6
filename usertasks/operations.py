"""The operations a status row offers as methods, implemented on the floors above the models.

``status.cancel()`` reaches the abort store, the broker and the containers, and
``status.rerun()`` sends a task: all of these import the models.  So that the models import
nothing above the ground floor, their methods call through this table, and
``UserTasksConfig.ready()`` (the app's composition root) fills it before any request or task
runs::

    operations.provide(cancel=usertasks.cancel.cancel, rerun=usertasks.sending.rerun)

``docs/architecture.md`` draws the floors.
"""

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = ["get", "provide"]

_table: dict[str, Callable[..., Any]] = {}


def provide(**implementations: Callable[..., Any]) -> None:
    """Plug in the implementations of operations by name (``cancel=...``)."""
    _table.update(implementations)


def get(name: str) -> Callable[..., Any]:
    """The implementation of operation ``name``; a clear error while the app is not ready."""
    try:
        return _table[name]
    except KeyError:
        raise ImproperlyConfigured(
            f"usertasks cannot {name} yet: the 'usertasks' app is not ready (is it in INSTALLED_APPS, and "
            "was django.setup() called?)"
        ) from None
