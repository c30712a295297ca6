"""``@user_task``: a Dramatiq actor whose runs are tracked in ``UserTaskStatus`` rows."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq import Actor
from dramatiq.middleware import SkipMessage

from .context import TaskContext, current_task
from .exceptions import Aborted, ForcedAbort
from .protocol import STATUS_OPTION
from .text import clip

logger = logging.getLogger("usertasks")

if TYPE_CHECKING:
    from .models import UserTaskStatus

__all__ = ["UserTaskActor", "user_task"]


_NOT_GIVEN = object()


class UserTaskActor(Actor):
    """A Dramatiq actor with :meth:`send_for`.  Created by :func:`user_task`."""

    #: usertasks options (``name``, ``total_steps``, ``unique``, ``notify``, ``abort_grace``,
    #: ``sensitive``);
    #: set by :func:`user_task`.
    usertask_options: dict[str, Any] = {}
    #: The signature of the task function without its ``task`` parameter; set by :func:`user_task`.
    _user_signature: inspect.Signature
    _warned_untracked = False

    # -- naming -------------------------------------------------------------------------------

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name (the ``task`` parameter excluded), in the
        signature's order, defaults included."""
        bind = self._binder
        bound = None if bind is None else bind(args, kwargs)
        if bound is not None:
            return bound
        try:
            signature_bound = self._user_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.actor_name}: {exc}") from None
        signature_bound.apply_defaults()
        return dict(signature_bound.arguments)

    @functools.cached_property
    def _binder(self) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any] | None] | None:
        """For a signature of plain parameters (no ``*args``, ``**kwargs`` or positional-only
        ones): a function doing what ``Signature.bind()`` and ``apply_defaults()`` do, ten times
        faster (a fan-out binds the arguments of every child), or returning ``None`` for a call
        that does not fit (``Signature.bind()`` then says why)."""
        params = list(self._user_signature.parameters.values())
        if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
            return None
        names = tuple(p.name for p in params)
        known = frozenset(names)
        most = sum(1 for p in params if p.kind == p.POSITIONAL_OR_KEYWORD)  # they come first
        defaults = {p.name: p.default for p in params if p.default is not p.empty}

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
            if len(args) > most:
                return None
            bound = dict(zip(names, args))
            for name in kwargs:
                if name not in known or name in bound:
                    return None
            for name in names[len(args) :]:
                if name in kwargs:
                    bound[name] = kwargs[name]
                elif name in defaults:
                    bound[name] = defaults[name]
                else:
                    return None
            return bound

        return bind

    def task_name(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> str:
        """The row's ``name``: the ``name`` option formatted over the arguments."""
        template = self.usertask_options.get("name")
        arguments = self.bind_arguments(args, kwargs or {})
        if template is None:
            return self.actor_name
        if callable(template):
            return clip(template(**arguments), 255)
        try:
            positional, names = self._format_arguments(arguments)
            return clip(template.format(*positional, **names), 255)
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise ValueError(f"{self.actor_name}: cannot format task name {template!r}: {exc!r}") from None

    def _format_arguments(self, arguments: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """``({0}, {1}, ...)`` and ``{name}`` values for the name template: positions follow the
        signature whether a value was passed by position, by keyword or left to its default;
        ``**kwargs`` entries are available by name."""
        positional, names = [], arguments
        for name, kind in self._kinds:
            if kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                positional.append(arguments[name])
            elif kind == inspect.Parameter.VAR_POSITIONAL:
                positional.extend(arguments.get(name, ()))
            elif kind == inspect.Parameter.VAR_KEYWORD:
                names = dict(names, **arguments.get(name, {}))
        return positional, names

    @functools.cached_property
    def _kinds(self) -> tuple[tuple[str, Any], ...]:
        return tuple((p.name, p.kind) for p in self._user_signature.parameters.values())

    # -- sending ------------------------------------------------------------------------------

    def send_for(self, user: Any, *args: Any, **kwargs: Any) -> UserTaskStatus:
        """Start this task for ``user``; returns its :class:`~usertasks.models.UserTaskStatus`.

        The row is written in the caller's transaction and the message is sent when that
        transaction commits (at once outside a transaction)."""
        return self.send_for_with_options(user, args=args, kwargs=kwargs)

    def send_for_with_options(
        self,
        user: Any,
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        delay: int | None = None,
        parent: UserTaskStatus | None = None,
        **options: Any,
    ) -> UserTaskStatus:
        """:meth:`send_for` with Dramatiq message options (``delay`` in milliseconds,
        ``max_retries``, ...)."""
        from .sending import prepare, send_prepared

        prepared = prepare(self, user, args, kwargs or {}, delay=delay, parent=parent, options=options)
        return send_prepared([prepared])[0]

    def send_many_for(
        self, user: Any, calls: Iterable[tuple[Any, ...] | list[Any] | dict[str, Any]], *, delay: int | None = None
    ) -> list[UserTaskStatus]:
        """Start one task per item of ``calls`` (a tuple of positional arguments or a dict of
        keyword arguments each) in one transaction: one bulk INSERT, then the messages in
        pipelined batches.  Returns the status rows."""
        from .sending import prepare_many, send_prepared

        calls = [(tuple(item), {}) if isinstance(item, (tuple, list)) else ((), dict(item)) for item in calls]
        return send_prepared(prepare_many(self, user, calls, delay=delay))

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: timedelta | int | None = None,
        **options: Any,
    ) -> Any:
        if STATUS_OPTION not in options and not self._warned_untracked:
            self._warned_untracked = True  # once per actor (an instance attribute)
            logger.warning(
                "%s was sent without a user (.send()): it runs untracked, with no status row. "
                "Use .send_for(user, ...) to track it.",
                self.actor_name,
            )
        return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)


def user_task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | Callable[..., str] | None = None,
    total_steps: int | Callable[..., int] | None = None,
    unique: bool | Callable[..., Any] = False,
    notify: Any = _NOT_GIVEN,
    abort_grace: float | None = None,
    sensitive: Iterable[str] = (),
    actor_class: type[UserTaskActor] = UserTaskActor,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    broker: Any = None,
    **options: Any,
) -> Any:
    """Declare a user task.

    The decorated function takes the :class:`~usertasks.context.TaskContext` of the run as its
    first argument, then the arguments it was sent with.  Returns a Dramatiq actor with an extra
    :meth:`~UserTaskActor.send_for`.  Other keyword arguments are Dramatiq actor options
    (``max_retries``, ``time_limit``, ``min_backoff``, ...).

    ``sensitive``: names of arguments (``("password",)``) that are never stored with the row
    (``status.arguments``); a task that was given one cannot be run again.
    """
    if isinstance(sensitive, str):
        sensitive = (sensitive,)
    sensitive = tuple(sensitive)

    def decorator(func: Callable[..., Any]) -> UserTaskActor:
        sig = inspect.signature(func)
        params = list(sig.parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{func.__qualname__}: a user task takes the task context as its first parameter")
        user_sig = sig.replace(parameters=params[1:])
        if not any(p.kind == p.VAR_KEYWORD for p in params[1:]):
            unknown = [s for s in sensitive if s not in user_sig.parameters]
            if unknown:
                raise TypeError(f"{func.__qualname__}: sensitive names no parameter: {', '.join(unknown)}")

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = current_task()
            if ctx is None or ctx.actor_name != actor.actor_name:
                ctx = TaskContext(status_id=None, message_id=None, actor_name=actor.actor_name)
            if not ctx.tracked:
                return func(ctx, *args, **kwargs)
            start = ctx.start_op if ctx.wait_for_start else None
            if start is not None and not start.wait() and ctx.abort_requested:
                # The row was canceled (or ended) between the worker's cancel check and this
                # run's start: the body must not run.  Acknowledged, not dead-lettered.
                from .abort import clear_flags

                clear_flags([ctx.status_id])
                raise SkipMessage(f"task {ctx.status_id} was canceled before it started")
            with ctx.body_lock:
                ctx.in_body = True
            try:
                return func(ctx, *args, **kwargs)
            finally:
                with ctx.body_lock:  # a forced abort is raised only while in_body is set
                    ctx.in_body = False

        broker_ = broker or dramatiq.get_broker()
        opts = dict(options)
        # An aborted task is never retried: Aborted and ForcedAbort join the actor's ``throws``.
        if "throws" in broker_.actor_options:
            throws = opts.get("throws") or ()
            if isinstance(throws, type):
                throws = (throws,)
            opts["throws"] = (*tuple(throws), Aborted, ForcedAbort)
        actor: UserTaskActor = dramatiq.actor(  # type: ignore[call-overload]  # (actor_class narrows the type)
            run,
            actor_class=actor_class,
            actor_name=actor_name or func.__name__,
            queue_name=queue_name,
            priority=priority,
            broker=broker_,
            **opts,
        )
        actor._user_signature = user_sig
        actor.usertask_options = {
            "name": name,
            "total_steps": total_steps,
            "unique": unique,
            "notify": None if notify is _NOT_GIVEN else notify,
            "abort_grace": abort_grace,
            "sensitive": sensitive,
        }
        return actor

    if fn is not None:
        return decorator(fn)
    return decorator


def _delay_eta(delay: int | None) -> Any:
    from django.utils import timezone

    return timezone.now() + timedelta(milliseconds=delay) if delay else None


def maintenance_actor(*, actor_name: str, **options: Any) -> Callable[[Callable[..., Any]], Actor]:
    """``dramatiq.actor`` for usertasks' own periodic actors (``usertasks_reap``,
    ``usertasks_purge``): of ``options``, only those the broker knows are given (``time_limit``
    needs ``TimeLimit``, ``max_retries`` needs ``Retries``), so they can be declared on a broker
    with any middleware list."""

    def decorator(fn: Callable[..., Any]) -> Actor:
        broker = dramatiq.get_broker()
        known = {name: value for name, value in options.items() if name in broker.actor_options}
        return dramatiq.actor(fn, actor_name=actor_name, broker=broker, **known)  # type: ignore[call-overload]

    return decorator
