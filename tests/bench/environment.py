"""The bench's own world: its database, its RabbitMQ vhost, and the processes it runs on them.

Nothing here touches the dev database, `make run`'s vhost or a test run's: the database is
`taskflow_bench` (dropped and created again), the vhost `taskflow-bench-<random>` (deleted at the
end). Call `configure()` before Django is set up.
"""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/taskflow"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
# The only settings that differ from production: per-user limits that a load generator hits at
# once (1000 requests/min, 10,000 active tasks). Both checks still run on every request.
BENCH_LIMITS = {"USER_RATE": "1000000/min", "MAX_ACTIVE_TASKS_PER_USER": "1000000"}


class BenchWorld:
    def __init__(self, *, database: str = "taskflow_bench") -> None:
        base_db = urlparse(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
        self.database = database
        self.database_url = base_db._replace(path=f"/{database}").geturl()
        self.admin_database_url = base_db._replace(path="/postgres").geturl()
        base_broker = urlparse(os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL))
        self.vhost = f"taskflow-bench-{uuid.uuid4().hex[:8]}"
        self.broker_url = base_broker._replace(path=f"/{self.vhost}").geturl()
        self.broker_user = base_broker.username or "guest"

    # --- database and vhost ----------------------------------------------------------------------
    def create(self) -> None:
        with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, self.broker_user, ".*", ".*", ".*")

    def destroy(self, *, keep_database: bool = False) -> None:
        rabbitmqctl("delete_vhost", self.vhost, check=False)
        if not keep_database:
            with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def sessions(self) -> int | None:
        """PostgreSQL sessions opened on the bench database so far (pg_stat_database, PG 14+):
        the difference over a section is how many connections its processes opened."""
        try:
            with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                row = conn.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.database,)
                ).fetchone()
        except psycopg.Error:
            return None
        return None if row is None or row[0] is None else int(row[0])

    def configure(self) -> None:
        """Point this process (Django, Celery) at the bench database and vhost."""
        os.environ.update(
            DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=self.broker_url,
            BENCH_DATABASE_URL=self.database_url,
            BENCH_BROKER_URL=self.broker_url,
            DJANGO_SETTINGS_MODULE="taskflow.settings",
            LOG_LEVEL="WARNING",
            **BENCH_LIMITS,
        )

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The Procfile processes' environment: production defaults, the bench's services."""
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "taskflow.settings",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "BENCH_DATABASE_URL": self.database_url,
            "BENCH_BROKER_URL": self.broker_url,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **BENCH_LIMITS,
        }
        env.update(overrides)
        return env


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=120)


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Broker:
    """Queue depths on the bench vhost (passive queue.declare: ready messages and consumers)."""

    def __init__(self, url: str) -> None:
        from kombu import Connection

        self.connection = Connection(url)
        self.connection.ensure_connection(max_retries=3)
        self.channel: Any = self.connection.channel()

    def depth(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers). Unacknowledged messages are not counted as ready."""
        _, ready, consumers = self.channel.queue_declare(queue=queue, passive=True)
        return int(ready), int(consumers)

    def exists(self, queue: str) -> bool:
        """Whether `queue` is declared (a failed passive declare closes the channel: reopen it)."""
        from amqp.exceptions import NotFound

        try:
            self.depth(queue)
        except NotFound:
            self.channel = self.connection.channel()
            return False
        return True

    def purge(self, queue: str) -> None:
        self.channel.queue_purge(queue)

    def close(self) -> None:
        self.connection.release()


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over `seconds` (from /proc/stat), 0..1."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total_a, idle_a = sample()
    time.sleep(seconds)
    total_b, idle_b = sample()
    total = total_b - total_a
    return 1 - (idle_b - idle_a) / total if total else 0.0


SPEED_PROBE_ADDITIONS = 1_000_000


def cpu_speed_ms(repeats: int = 3) -> float:
    """Milliseconds for a fixed piece of pure-Python work (one million additions), the best of
    `repeats`. Steady on a steady machine; higher when the host gives this VM less CPU (other
    tenants, clock speed), which neither the processes' CPU shares nor the steal counter showed on
    the machine where it was added (stop 15: 0.67-1.15 s for ten million additions, idle)."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        total = 0
        for number in range(SPEED_PROBE_ADDITIONS):
            total += number
        best = min(best, time.perf_counter() - began)
    return best * 1000


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(*, max_wait: float, busy_below: float = 0.25, quiet_for: int = 5) -> float:
    """Wait (at most `max_wait` s) until other work on the machine leaves the CPUs mostly idle
    for `quiet_for` seconds in a row; the seconds waited."""
    began = time.monotonic()
    quiet = 0
    while quiet < quiet_for and time.monotonic() - began < max_wait:
        quiet = quiet + 1 if cpu_busy(1.0) < busy_below else 0
    return time.monotonic() - began


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree_rss(pid: int) -> dict[str, int]:
    """RSS of a worker's main process and of each pool process, in bytes."""
    out = {f"main {pid}": rss_bytes(pid)}
    for child in sorted(children(pid)):
        try:
            out[f"child {child}"] = rss_bytes(child)
        except OSError:
            continue
    return out


SERVICES = {"postgres", "beam.smp", "redis-server", "epmd", "erl_child_setup", "inet_gethost"}


class CpuMonitor:
    """Who used the CPUs during each section: this bench (its process tree), the shared services
    (PostgreSQL, RabbitMQ, Redis: they serve everybody), and everything else on the machine
    (another test run, say), as a share of all cores; sampled from /proc every second."""

    def __init__(self) -> None:
        import threading

        self.root = os.getpid()
        self.cores = len(os.sched_getaffinity(0))
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self.totals = {"bench": 0.0, "services": 0.0, "others": 0.0}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> tuple[float, dict[str, float]]:
        with self._lock:
            return time.monotonic(), dict(self.totals)

    def shares(self, since: tuple[float, dict[str, float]]) -> dict[str, float]:
        """Average share of all cores (0..1) used by each group since a snapshot."""
        began, before = since
        now, after = self.snapshot()
        elapsed = max(1e-6, now - began) * self.cores
        return {k: round((after[k] - before[k]) / elapsed, 3) for k in after}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        used: dict[int, int] = {}
        names: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            pid = int(entry.name)
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            parents[pid] = int(fields[1])
            used[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            names[pid] = name
        ours = {self.root}
        changed = True
        while changed:
            grown = {pid for pid, parent in parents.items() if parent in ours} - ours
            changed = bool(grown)
            ours |= grown
        deltas = {"bench": 0.0, "services": 0.0, "others": 0.0}
        for pid, ticks in used.items():
            delta = ticks - self._last.get(pid, 0)
            if delta <= 0:
                continue
            if pid in ours:
                group = "bench"
            elif names[pid] in SERVICES:
                group = "services"
            else:
                group = "others"
            deltas[group] += delta / self.ticks_per_s
        self._last = used
        with self._lock:
            for key, value in deltas.items():
                self.totals[key] += value
