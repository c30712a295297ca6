"""Where each kind of thread of a worker process spends its time, from a py-spy recording.

    py-spy record --idle --threads --nonblocking -r 200 -f raw -o spy.txt --pid <worker pid> --duration 6
    python bench/spy_roles.py spy.txt

``--idle`` keeps the samples of waiting threads, so the shares say what each thread waits on
as well as what it computes (``--gil`` instead keeps only the thread holding the GIL: where the
process's one core of Python goes).  Threads are grouped by role (worker threads, the
consumer, the status writer, the acker); each sample is attributed to the first of the
``MARKERS`` found on its stack, else to its innermost frame.
"""

import collections
import sys

ROLES = (
    ("writer", "Writer._run"),
    ("acker", "Acker._run"),
    ("worker", "WorkerThread.run"),
    ("consumer", "ConsumerThread.run"),
)

MARKERS = (
    "Queue.get", "UserTaskAbort.claim", "UserTaskTracking.before_process_message",
    "UserTaskTracking.after_process_message", "Condition.wait", "Event.wait", "end_batch",
    "_convert_query", "Connection.wait", "_ack_pipelined", "_post_process_one", "emit_after", "emit_before",
)


def summarize(lines):
    by_role = collections.defaultdict(collections.Counter)
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        role = next((name for name, marker in ROLES if marker in stack), "other")
        names = [frame.split(" (")[0] for frame in stack.split(";")]
        key = next((m for m in MARKERS if any(m in n for n in names)), names[-1])
        by_role[role][key] += int(count)
    return by_role


def main(path, top=8):
    with open(path) as f:
        by_role = summarize(f)
    for role, counts in sorted(by_role.items(), key=lambda item: -sum(item[1].values())):
        total = sum(counts.values())
        print(f"{role} ({total} samples)")
        for key, n in counts.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {key}")


if __name__ == "__main__":
    main(sys.argv[1])
