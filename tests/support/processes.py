"""Start the Procfile's processes for real, against the test database and the test vhost."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"


def procfile() -> dict[str, str]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def test_environment(**overrides: str) -> dict[str, str]:
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
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


class Process:
    def __init__(self, name: str, command: str, env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        # A shell expands ${VAR:-default} exactly as honcho does; own process group so that a
        # signal reaches the whole tree (prefork children included).
        self.popen = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

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

    def kill_group(self, signum: int = 9) -> None:  # SIGKILL
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.popen.wait(timeout=10)
        self.kill_group()  # leftovers of the group, if any
        self._log.close()
        return self.popen.returncode


READY_LINE = {
    "worker": "ready.",
    "worker-io": "ready.",
    "beat": "beat: Starting",
    "deadletters": "Dead-letter consumer started",
    "web": "Booting worker",
}


def start(name: str, *, env: dict[str, str] | None = None, command: str | None = None) -> Process:
    process = Process(name, command or procfile()[name], env or test_environment())
    process.wait_for_log(READY_LINE[name], timeout=60)
    return process


@contextmanager
def running(*names: str, **env_overrides: str) -> Iterator[dict[str, Process]]:
    env = test_environment(**env_overrides)
    started: dict[str, Process] = {}
    try:
        for name in names:
            started[name] = start(name, env=env)
        yield started
    finally:
        for process in started.values():
            process.stop()


def dump_logs(processes: dict[str, Any]) -> str:
    return "\n".join(f"--- {name}\n{p.log()[-4000:]}" for name, p in processes.items())
