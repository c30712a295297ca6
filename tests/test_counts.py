"""Outcome counters and a container's share of its children's steps: the rules, the checks of
``task.count()``, and no lost update when many threads add to one container at once."""

import threading
import time

import pytest
from django.db import close_old_connections, connection, transaction

from usertasks import TaskContext, transitions
from usertasks.containers.counting import merge, ordered, share
from usertasks.models import UserTaskStatus
from usertasks.states import State


def test_count_adds_in_memory_and_checks_its_input():
    # No database access is allowed in this test: count() makes none.
    ctx = TaskContext(status_id=1, message_id="m", actor_name="a")
    ctx.count(succeeded=2, failed=0)
    ctx.count(succeeded=1, bounced=4)
    assert ctx.counts == {"succeeded": 3, "failed": 0, "bounced": 4} and ctx.dirty
    for bad in ({"sent": -1}, {"sent": 1.5}, {"sent": True}, {"sent": "3"}, {"x" * 65: 1}, {"": 1}):
        with pytest.raises(ValueError):
            ctx.count(**bad)
    # A refused call adds nothing, not even the good counters given with it.
    with pytest.raises(ValueError):
        ctx.count(succeeded=5, failed=-1)
    assert ctx.counts == {"succeeded": 3, "failed": 0, "bounced": 4}


def test_share_of_a_child():
    assert share(3, 10, State.PENDING) == (0, 0)
    assert share(3, 10, State.RETRYING) == (0, 0)
    assert share(3, 10, State.IN_PROGRESS) == (3, 9)
    assert share(12, 10, State.IN_PROGRESS) == (10, 9)  # more steps than announced
    assert share(3, None, State.IN_PROGRESS) == (0, 0)  # total unknown: one step, not done
    assert share(3, 0, State.SUCCEEDED) == (0, 0)
    for state in (State.SUCCEEDED, State.FAILED, State.CANCELED):
        assert share(3, 10, state) == (9, 9)


def test_merge_and_order():
    assert merge({"sent": 1}, {"sent": 2, "failed": 1}) == {"sent": 3, "failed": 1}
    assert merge(None, {"a": 1}) == {"a": 1}
    assert ordered({"zeta": 1, "skipped": 2, "alpha": 3, "succeeded": 4, "failed": 5}) == [
        ("succeeded", 4), ("failed", 5), ("skipped", 2), ("alpha", 3), ("zeta", 1),
    ]
    assert ordered(None) == []


@pytest.mark.django_db(transaction=True)
def test_no_lost_update_when_many_threads_add_to_one_container(user):
    container = UserTaskStatus.objects.create(
        user=user, task_id="c", task_class="x", name="c", state=State.IN_PROGRESS, is_container=True,
        children_total=1000, total_steps=1000,
    )
    threads, rounds = 8, 40
    errors = []
    start = threading.Barrier(threads)

    def add(n):
        try:
            start.wait()
            for i in range(rounds):
                for attempt in range(50):  # SQLite: a writer may find the file locked
                    try:
                        with transaction.atomic():
                            transitions.children_ended(
                                None, container.pk, steps=1, total=2, tallies={"sent": 2, f"t{n}": 1, "failed": i % 2}
                            )
                        break
                    except Exception as exc:  # noqa: BLE001
                        if "locked" not in str(exc) or attempt == 49:
                            raise
                        time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    workers = [threading.Thread(target=add, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    container.refresh_from_db()
    assert container.counts == {
        "sent": 2 * threads * rounds, "failed": threads * rounds // 2, **{f"t{n}": rounds for n in range(threads)}
    }
    assert (container.completed_steps, container.total_steps) == (threads * rounds, 1000 + 2 * threads * rounds)
    assert container.state == State.IN_PROGRESS  # progress alone never ends a container
