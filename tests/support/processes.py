"""Start the Procfile's processes for real, against the test database and the test vhost."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from signal import SIGKILL
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"

# What a process that ends because it was sent SIGTERM may exit with: 0 after a graceful shutdown,
# or "killed by SIGTERM" (-15 from Popen, 143 when a shell reports it).
CLEAN_EXIT_CODES = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM})


def procfile() -> dict[str, str]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """The URL of the database this test process uses (the test database, inside a test)."""
    db = connection.settings_dict
    user = quote(db["USER"] or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{quote(db['NAME'], safe='')}"
    )


def test_environment(**overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "taskflow.settings",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # The test's cache namespace (tests/conftest.py): its rate-limit counts and cached answers.
        "CACHE_KEY_PREFIX": settings.CACHES["default"].get("KEY_PREFIX", ""),
        "TASKFLOW_HANDLER_MODULES": "tests.support.handlers",
        "RETRY_BACKOFF_BASE_SECONDS": "0.05",
        "RETRY_BACKOFF_CAP_SECONDS": "0.2",
        "RELEASE_INTERVAL_MS": "200",
        "REPUBLISH_AFTER_SECONDS": "1",
        "CONN_MAX_AGE": "0",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


# Every process a test started and has not stopped: what the session stops at its end.
_not_stopped: dict[int, "Process"] = {}


def stop_leftovers() -> list[str]:
    """Stop what tests started and left running (a test that failed before its own stop); their
    names. Else such a process outlives the run: a dead-letter consumer left so took the next
    tests' dead letters, and kept the test database open into the next run."""
    names = []
    for process in list(_not_stopped.values()):
        if process.returncode is None:
            names.append(process.name)
        process.stop(timeout=5)
    return names


class Process:
    def __init__(self, name: str, command: str, env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.command = command
        self.log_path = LOG_DIR / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        # A shell expands ${VAR:-default} exactly as honcho does, then `exec`s the command, so the
        # pid is the command's own; own process group so that a signal reaches the whole tree
        # (prefork children included).
        self.popen = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _not_stopped[id(self)] = self

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """None while the process runs."""
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        wait_for(
            lambda: text in self.log() or self.popen.poll() is not None,
            timeout=timeout,
            what=f"{self.name} to log {text!r}",
        )
        if text not in self.log():
            raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def terminate(self) -> None:
        """Ask for a graceful shutdown (SIGTERM), as honcho and process managers do."""
        self.signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self, signum: int = SIGKILL) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code. Safe to call more than once."""
        self.terminate()
        if self.wait(timeout) is None:
            self.kill_group()
            self.popen.wait(timeout=10)
        self.kill_group()  # leftovers of the group, if any
        if not self._log.closed:
            self._log.close()
        _not_stopped.pop(id(self), None)
        return self.popen.returncode


READY_LINE = {
    "worker": "ready.",
    "worker-io": "ready.",
    "beat": "beat: Starting",
    "deadletters": "Dead-letter consumer started",
    # The master binds the socket before it boots workers, so connections wait in the backlog.
    "web": "Booting worker",
}


def start(name: str, *, env: dict[str, str] | None = None, command: str | None = None) -> Process:
    process = Process(name, command or procfile()[name], env or test_environment())
    try:
        process.wait_for_log(READY_LINE[name], timeout=60)
    except BaseException:
        process.stop(timeout=5)
        raise
    return process


def start_all(names: tuple[str, ...], env: dict[str, str]) -> dict[str, Process]:
    """Start every process at once, then wait until each is ready (faster than one by one)."""
    started: dict[str, Process] = {}
    try:
        for name in names:
            started[name] = Process(name, procfile()[name], env)
        for name, process in started.items():
            process.wait_for_log(READY_LINE[name], timeout=60)
    except BaseException:
        stop_all(started, timeout=5)
        raise
    return started


def stop_all(processes: dict[str, Process], timeout: float = 20) -> dict[str, int]:
    """SIGTERM every process at once, then collect the exit codes (SIGKILL after `timeout`)."""
    for process in processes.values():
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes.values():
        process.wait(max(0.0, deadline - time.monotonic()))
    return {name: process.stop(timeout=0) for name, process in processes.items()}


@contextmanager
def running(*names: str, **env_overrides: str) -> Iterator[dict[str, Process]]:
    """Run the named Procfile processes (all ready) for the block; stop them after it."""
    env = test_environment(**env_overrides)
    started = start_all(names, env)
    try:
        yield started
    finally:
        stop_all(started)


def dump_logs(processes: dict[str, Any]) -> str:
    return "\n".join(f"--- {name}\n{p.log()[-4000:]}" for name, p in processes.items())
