"""The structure of the code is a contract too (docs/architecture.md): no import closes a circle,
even one inside a function; the floors hold (.importlinter); nothing but usertasks.transitions
writes a task's state; nothing outside usertasks.redis reaches into Dramatiq's Redis layout."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"usertasks": ROOT / "usertasks", "user_tasks": ROOT / "compat" / "user_tasks"}


def _graph():
    """``{module: {imported module, ...}}`` of usertasks and user_tasks, every import counted
    (inside functions too)."""
    import grimp

    sys.path.insert(0, str(ROOT / "compat"))
    try:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "compat"))
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _circles(edges):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_circles_are_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_closes_a_circle():
    edges = _graph()
    assert len(edges) > 60  # the graph was built
    assert _circles(edges) == []


def test_the_floors_hold():
    """``lint-imports`` keeps every contract of ``.importlinter`` (the floors of usertasks, and
    user_tasks using only public modules)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "compat"), str(ROOT)]))
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _python_files(package):
    return sorted(p for p in PACKAGES[package].rglob("*.py") if "migrations" not in p.parts)


def _writes_state(tree):
    """Lines of ``tree`` that write a task's ``state``: an ``.update(state=...)`` call, a
    ``state`` key in a dict passed to one (``**fields``), or an assignment to ``<x>.state``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            if any(k.arg == "state" for k in node.keywords):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_only_transitions_writes_a_state(package):
    """Every ``.update(state=...)`` and every assignment to ``.state`` is in usertasks.transitions
    (the model's own ``State`` class attribute and a test helper's aside)."""
    offenders = []
    for path in _python_files(package):
        if path == ROOT / "usertasks" / "transitions.py":
            continue
        for line in _writes_state(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []


def test_only_usertasks_redis_knows_dramatiqs_redis_layout():
    """Dramatiq's Redis keys (``__acks__``, ``__heartbeats__``, ``.msgs``), its dispatch script
    and its consumer's internals are named only inside usertasks.redis."""
    markers = ("__acks__", "__heartbeats__", ".msgs", "do_fetch", "do_ack", "do_requeue", "_RedisConsumer",
               'scripts["dispatch"]', "message_cache", "queued_message_ids")
    offenders = []
    for package in PACKAGES:
        for path in _python_files(package):
            if (ROOT / "usertasks" / "redis") in path.parents:
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in markers if m in text]
    assert offenders == []


def test_no_dramatiq_object_is_patched():
    """No ``__class__`` assignment and no method of a Dramatiq object replaced (an assignment to
    an attribute named like one of Dramatiq's broker or consumer methods)."""
    import dramatiq
    from dramatiq.brokers.redis import _RedisConsumer
    from dramatiq.worker import _ConsumerThread as ConsumerThread  # (public in Dramatiq 2 only)

    from dramatiq.brokers.redis import RedisBroker

    names = {"__class__"}
    for cls in (dramatiq.Broker, RedisBroker, dramatiq.broker.Consumer, _RedisConsumer, ConsumerThread):
        names.update(n for n, v in vars(cls).items() if callable(v) and n not in ("__init__",))
    offenders = []
    for package in PACKAGES:
        for path in _python_files(package):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Attribute) and target.attr in names and not (
                            isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")
                        ):
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{target.attr}")
    assert offenders == []
