"""py-spy, from outside the process: record collapsed stacks, then say where the time went.

`record()` starts `py-spy record --format raw` on a process and its children for a while; the
result is a collapsed-stack file (flamegraph.pl or https://www.speedscope.app open it) and a
summary: the share of samples per library (the innermost frame that belongs to one) and the
functions with the largest inclusive share.
"""

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")

# (label, package directory); the innermost frame whose file is in one names the library.
LIBRARIES: list[tuple[str, str]] = [
    ("psycopg (PostgreSQL round trips)", "psycopg/"),
    ("amqp/kombu (RabbitMQ)", "amqp/"),
    ("amqp/kombu (RabbitMQ)", "kombu/"),
    ("simplejwt", "rest_framework_simplejwt/"),
    ("DRF", "rest_framework/"),
    ("django ORM (query building)", "django/db/"),
    ("django (other)", "django/"),
    ("celery/billiard", "celery/"),
    ("celery/billiard", "billiard/"),
    ("gunicorn", "gunicorn/"),
    ("taskflow apps", "apps/"),
    ("json", "json/"),
    ("logging", "logging/"),
    ("uuid", "uuid.py"),
]

# Waiting for work, not doing it (recorded with --idle): a pool process waiting for its next job
# (anywhere in the stack), or, as the innermost frame, an event loop (Celery's main process,
# gunicorn's arbiter and gthread loop) or an idle thread of gunicorn's thread pool.
IDLE_IN_STACK = {
    ("billiard/queues.py", "_SimpleQueue.get_payload"),
    ("billiard/pool.py", "wait_for_job"),
}
IDLE_LEAF = {
    ("kombu/utils/eventio.py", "_epoll.poll"),
    ("gunicorn/workers/gthread.py", "ThreadWorker.wait_for_and_dispatch"),
    ("gunicorn/arbiter.py", "Arbiter.sleep"),
    ("concurrent/futures/thread.py", "_worker"),
    ("threading.py", "Condition.wait"),
}


def _in(file: str, package: str) -> bool:
    return file.startswith(package) or f"/{package}" in file


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(
    pid: int, seconds: float, out: Path, *, idle: bool = False, rate: int = 100
) -> subprocess.Popen[bytes] | None:
    """Start py-spy in the background (None if py-spy is missing); wait on it with finish()."""
    binary = py_spy()
    if binary is None:
        return None
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, int(seconds))),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    if idle:
        command.append("--idle")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(process: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if process is not None:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw.strip())
        if match:
            frames.append((match["func"], match["file"]))
        else:
            frames.append((raw.strip(), ""))
    return frames


def _library(frames: list[tuple[str, str]]) -> str:
    for _func, file in reversed(frames):  # innermost first
        for label, package in LIBRARIES:
            if _in(file, package):
                return label
    return "python stdlib/other" if frames else "unknown"


def _is_idle(frames: list[tuple[str, str]]) -> bool:
    if not frames:
        return True
    for func, file in frames:
        if any(func == f and _in(file, p) for p, f in IDLE_IN_STACK):
            return True
    func, file = frames[-1]
    if any(func == f and _in(file, p) for p, f in IDLE_LEAF):
        return True
    # A leaf in selectors.py under gunicorn's loop or arbiter is waiting too.
    return file.endswith("selectors.py") and any(
        _in(f, "gunicorn/") and ("wait_for_and_dispatch" in fn or "sleep" in fn)
        for fn, f in frames[-3:]
    )


def summarise(path: Path, *, top: int = 25, drop_idle: bool = True) -> dict[str, Any]:
    """Shares of samples by library (innermost frame) and the top functions by inclusive share."""
    if not path.exists():
        return {"error": f"no profile at {path}"}
    by_library: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        # py-spy puts "process NNN:..." and "thread (...)" pseudo-frames at the root.
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if drop_idle and _is_idle(frames):
            idle += count
            continue
        total += count
        by_library[_library(frames)] += count
        if frames:
            leaves[f"{frames[-1][0]} ({_short(frames[-1][1])})"] += count
        seen = set()
        for func, file in frames:
            short = _short(file)
            key = f"{func} ({short})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
    if total == 0:
        return {"samples": 0, "idle_samples": idle}

    def share(n: int) -> float:
        return round(100 * n / total, 1)

    return {
        "samples": total,
        "idle_samples": idle,
        "by_library_pct": {k: share(v) for k, v in by_library.most_common()},
        "taskflow_inclusive_pct": {
            k: share(v) for k, v in inclusive.most_common() if " (apps/" in k
        },
        "hot_leaves_pct": {k: share(v) for k, v in leaves.most_common(top)},
        "top_inclusive_pct": {k: share(v) for k, v in inclusive.most_common(top * 2)},
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def render(summary: dict[str, Any], *, libraries: int = 10, functions: int = 15) -> str:
    if not summary.get("samples"):
        return "    (no samples)"
    out = [f"    {summary['samples']} busy samples ({summary['idle_samples']} idle left out)"]
    out.append("    by library (innermost frame):")
    for name, pct in list(summary["by_library_pct"].items())[:libraries]:
        out.append(f"      {pct:5.1f}%  {name}")
    out.append("    taskflow functions, inclusive:")
    for name, pct in list(summary["taskflow_inclusive_pct"].items())[:functions]:
        out.append(f"      {pct:5.1f}%  {name}")
    out.append("    innermost frames (self time):")
    for name, pct in list(summary["hot_leaves_pct"].items())[:libraries]:
        out.append(f"      {pct:5.1f}%  {name}")
    return "\n".join(out)
