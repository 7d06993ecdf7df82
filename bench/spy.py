"""Where a server's time goes under load: py-spy samples folded into a few cost groups.

`bench.serve --profile` records each profiled run's server with `py-spy record --format
raw` (every thread, idle ones dropped) and reports each group's share of the samples;
times the server's CPU per request, that is roughly milliseconds per request. A sample
belongs to the first group (in `GROUPS` order) with a frame in its stack that matches,
so the TensorFlow call inside the scorer counts as the model call, not as the scorer.

py-spy is not a dependency: `pip install py-spy` (it needs permission to read the
server's memory: root, or ptrace allowed).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

# (group, substrings of a frame "function (file:line)"), first match wins
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("model call (TensorFlow signature)", ("tensorflow/",)),
    ("feature encoding", ("FeatureMap.",)),
    ("Redis (redis-py, parsing replies)", ("Store.", "redis/")),
    ("request body (read, JSON, pydantic)", ("request_body_to_args", "Request.json",
                                             "Request.body", "_get_body", "_read_body (",
                                             "model_validate_json")),
    ("response (pydantic, JSON)", ("serialize_response", "jsonable_encoder", "render (",
                                   "JSONResponse.__init__", "Response.__init__",
                                   "model_dump_json")),
    ("HTTP write (uvicorn send)", ("RequestResponseCycle.send",)),
    ("FastAPI dependencies", ("solve_dependencies",)),
    ("micro-batcher, thread hand-off", ("MicroBatcher", "to_thread", "concurrent/futures",
                                        "run_in_executor")),
    ("scorer (NumPy, Python)", ("Scorer.", "app/user_sums.py", "model/bundle.py")),
    ("metrics", ("prometheus_client", "ObserveRequests._observe")),
]
OTHER = "web stack, event loop (the rest)"
# a sample whose innermost frame is one of these is a thread waiting, not working
IDLE = ("Condition.wait", "Queue.get", "Runner.run", "_worker (concurrent/futures",
        "Event.wait", "select (", "BaseEventLoop.run_forever", "WorkerThread.run")


def available() -> str | None:
    return shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` (every thread) into `out`; wait on the result."""
    binary = available()
    if binary is None:
        raise RuntimeError("py-spy not found: pip install py-spy")
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", str(rate), "--format", "raw", "--output", str(out), "--threads",
         "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def group_of(frames: list[str]) -> str:
    for group, marks in GROUPS:
        if any(mark in frame for frame in frames for mark in marks):
            return group
    return OTHER


def shares(raw: str) -> dict[str, float]:
    """Share of the busy samples per group, largest first, from py-spy's raw output
    ("thread;frame;...;frame count" per line, root first)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first entry names the thread
        if not frames or any(frames[-1].startswith(idle) for idle in IDLE):
            continue
        counts[group_of(frames)] += int(n)
    total = sum(counts.values())
    return {g: n / total for g, n in counts.most_common()} if total else {}
