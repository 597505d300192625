"""How busy XLA's CPU threads are during a train step, from a profiler trace.

    python -m benchmarks.threads --geometry=simple --size=384x512
    python -m benchmarks.threads --geometry=reference --size=384x512 --steps=5 --top=20

Compiles the library's jitted train step (fcn_jax.steps, full-width FCN-8s with the
geometry's recipe as in benchmarks/steps.py, fast paths 'auto'), runs it once to warm up,
then traces `--steps` steps with JAX's profiler and reads the trace back. XLA's CPU runtime
marks where each thread of its pool starts and stops a piece of work, and when each
operation of the compiled step is started (named as in the compiled module). From those it
prints:

* the share of the traced time during which no pool thread worked, one did, two did, ...;
* per kind of operation (its name in the module without the number: `dot_general`,
  `add_bitcast_fusion`, ...), the milliseconds per step during which it was the operation
  started last, split by how many pool threads worked meanwhile.

The second is an attribution, not a measurement: XLA runs an operation's work on the pool
after starting it, so the time from one operation's start to the next one's is counted as
the first's. It shows which kinds of operation leave threads idle on a machine with few
cores: fusions XLA runs on one thread (a dynamic-update-slice written in place, a
reduction), the tails of matrix products split unevenly between the threads.
"""

import bisect
import collections
import glob
import re
import tempfile
from collections.abc import Callable, Iterable

from benchmarks import steps as benchmark_steps
from benchmarks import tricks as benchmark_tricks

POOL_THREAD = "tf_XLAEigen"  # the name of the threads of XLA's CPU thread pool
REGION_START, REGION_STOP = "ThreadpoolListener::StartRegion", "ThreadpoolListener::StopRegion"
# Trace events on the pool threads that are not operations of the compiled module.
NOT_OPERATIONS = ("ThreadpoolListener::", "ThunkExecutor::", "end: ", "while")

Event = tuple[int, int, str, str]  # (start ns, end ns, thread, name)


def traced_events(run: Callable[[], object], steps: int) -> list[Event]:
    """The trace events of `steps` calls of `run`, from every thread of the process."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            run()
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        trace = ProfileData.from_file(path)
    return [
        (event.start_ns, event.start_ns + event.duration_ns, line.name, event.name)
        for plane in trace.planes
        for line in plane.lines
        for event in line.events
    ]


def busy_intervals(events: Iterable[Event]) -> list[tuple[int, int]]:
    """The (start, stop) of every piece of pool work, from each pool thread's region marks."""
    marks = collections.defaultdict(list)
    for start, _, thread, name in events:
        if thread.startswith(POOL_THREAD) and name in (REGION_START, REGION_STOP):
            marks[thread].append((start, name == REGION_START))
    intervals = []
    for thread_marks in marks.values():
        opened = None
        for time, is_start in sorted(thread_marks):
            if is_start:
                opened = time
            elif opened is not None:
                intervals.append((opened, time))
                opened = None
    return intervals


class BusyThreads:
    """How many pool threads are at work at each moment, from their busy intervals."""

    def __init__(self, intervals: list[tuple[int, int]]):
        changes = sorted(
            [(start, 1) for start, _ in intervals] + [(stop, -1) for _, stop in intervals]
        )
        self.times = [time for time, _ in changes]
        self.counts = []  # threads at work from self.times[i] to self.times[i + 1]
        busy = 0
        for _, change in changes:
            busy += change
            self.counts.append(busy)

    def between(self, start: int, stop: int) -> collections.Counter:
        """Nanoseconds of [start, stop) with 0, 1, 2, ... threads at work."""
        spent = collections.Counter()
        i = bisect.bisect_right(self.times, start) - 1
        time = start
        while time < stop:
            busy = self.counts[i] if i >= 0 else 0
            until = min(self.times[i + 1] if i + 1 < len(self.times) else stop, stop)
            spent[busy] += until - time
            time, i = until, i + 1
        return spent


def operation_kind(name: str) -> str:
    """The kind of an operation: its name in the compiled module less its number."""
    return re.sub(r"\.\d+$", "", name)


def by_operation_kind(events: list[Event], busy: BusyThreads) -> dict[str, collections.Counter]:
    """Per kind of operation, the nanoseconds with 0, 1, 2, ... threads at work after it.

    An operation owns the time from its start to the next operation's (module docstring);
    the last one started owns none.
    """
    starts = sorted(
        (start, name)
        for start, _, thread, name in events
        if thread.startswith(POOL_THREAD) and not name.startswith(NOT_OPERATIONS)
    )
    kinds = collections.defaultdict(collections.Counter)
    for (start, name), (following, _) in zip(starts, starts[1:], strict=False):
        kinds[operation_kind(name)].update(busy.between(start, following))
    return kinds


def _table(kinds: dict[str, collections.Counter], steps: int, top: int, threads: int) -> list[str]:
    header = " | ".join(f"{n} busy ms" for n in range(threads + 1))
    rows = [f"| operation | {header} | total ms |", "|---" * (threads + 3) + "|"]
    ranked = sorted(kinds.items(), key=lambda item: -sum(item[1].values()))[:top]
    for kind, spent in ranked:
        cells = " | ".join(f"{spent[n] / 1e6 / steps:.1f}" for n in range(threads + 1))
        rows.append(f"| {kind} | {cells} | {sum(spent.values()) / 1e6 / steps:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Prints the thread shares and the table by kind of operation; `argv`: the command line."""
    parser = benchmark_tricks.step_parser(__doc__.splitlines()[0], size="384x512")
    parser.add_argument("--steps", type=benchmark_steps.positive_int, default=3)
    parser.add_argument("--top", type=benchmark_steps.positive_int, default=15)
    args = parser.parse_args(argv)
    height, width = benchmark_tricks.parsed_size(parser, args.size)
    fast = benchmark_tricks.auto_fast_paths()
    run = benchmark_tricks.timed_step(args.geometry, fast, height, width)
    events = traced_events(run, args.steps)
    intervals = busy_intervals(events)
    if not intervals:
        raise SystemExit(
            "the trace has no thread-pool regions: this jaxlib's CPU profiler does not mark them"
        )
    busy = BusyThreads(intervals)
    shares = busy.between(busy.times[0], busy.times[-1])
    threads = max(shares)
    span = sum(shares.values())
    print(f"fcn8s ({args.geometry}) {height}x{width}, train step, {args.steps} traced steps:")
    print(f"  {span / 1e6 / args.steps:.0f} ms of pool activity per step; threads at work:")
    for n in range(threads + 1):
        print(f"  {n}: {shares[n] / span:6.1%} ({shares[n] / 1e6 / args.steps:.0f} ms per step)")
    kinds = by_operation_kind(events, busy)
    print("\n".join(_table(kinds, args.steps, args.top, threads)))


if __name__ == "__main__":
    main()
