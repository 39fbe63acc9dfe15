"""End to end: the Procfile's real processes (gunicorn, two Celery workers, beat and the dead-letter
consumer) on the test database and the run's own RabbitMQ vhost, driven over real HTTP."""

import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from tests.support import processes
from tests.support.processes import CLEAN_EXIT_CODES, ROOT, dump_logs, free_port, running
from tests.support.wait import wait_for

logger = logging.getLogger(__name__)

PROCESSES = ("web", "worker", "worker-io", "beat", "deadletters")
EMAIL = "e2e@example.com"
PASSWORD = "e2e-correct-horse-battery"
SHUTDOWN_DEADLINE_SECONDS = 25.0  # above gunicorn's graceful_timeout (20 s); no task is running


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Api:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def login(self) -> None:
        registered = self.http.post("/api/register", json={"email": EMAIL, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        assert registered.json()["email"] == EMAIL
        tokens = self.http.post("/api/login", json={"email": EMAIL, "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
        self.http.headers["Authorization"] = f"Bearer {tokens.json()['access']}"
        assert self.http.get("/api/me").json()["email"] == EMAIL

    def create(self, type: str, payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
        response = self.http.post("/api/tasks", json={"type": type, "payload": payload, **fields})
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    def close(self) -> None:
        self.http.close()


def settled(task: dict[str, Any]) -> bool:
    if task["status"] == "failed":
        return task["dead_lettered_at"] is not None  # the dead-letter consumer recorded it
    return task["status"] in {"succeeded", "cancelled"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_procfile_runs_tasks_end_to_end_and_stops_cleanly_on_sigterm(settings):
    # The topology and beat's release schedule, as `make run` does before it starts honcho; with
    # the release interval the processes are given.
    interval_ms = int(processes.test_environment()["RELEASE_INTERVAL_MS"])
    settings.TASKFLOW = {**settings.TASKFLOW, "RELEASE_INTERVAL_MS": interval_ms}
    call_command("setup_broker")
    port = free_port()
    timings: dict[str, float] = {}
    began = time.monotonic()

    with running(*PROCESSES, PORT=str(port), HOST="127.0.0.1", WORKER_CONCURRENCY="2") as procs:
        timings["start"] = time.monotonic() - began
        api = Api(f"http://127.0.0.1:{port}")
        try:
            wait_for(lambda: _health(api) == 200, timeout=30, what="gunicorn to answer /health")
            api.login()

            # Created first, so that no other create can use up its 2 s on a slow machine.
            run_at = datetime.now(tz=UTC) + timedelta(seconds=2)
            created = time.monotonic()
            tasks = {
                "postponed": api.create(
                    "echo", {"later": True}, run_at=run_at.isoformat().replace("+00:00", "Z")
                ),
                "echo": api.create("echo", {"hello": "world"}),
                "long": api.create("long_computation", {"duration": 1}),
                "flaky": api.create("test_flaky", {"fail_times": 2}),
                "permanent": api.create("test_permanent", {}),
            }
            assert tasks["postponed"]["status"] == "postponed"
            assert {t["status"] for n, t in tasks.items() if n != "postponed"} == {"queued"}

            def current() -> dict[str, dict[str, Any]] | None:
                now = {name: api.get(task["id"]) for name, task in tasks.items()}
                return now if all(settled(task) for task in now.values()) else None

            try:
                final = wait_for(current, timeout=60, interval=0.2, what="every task to settle")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{dump_logs(procs)}") from exc
            timings["tasks"] = time.monotonic() - created
        finally:
            api.close()
        assert final is not None  # wait_for returns only a true value

        echo, long, postponed = final["echo"], final["long"], final["postponed"]
        flaky, permanent = final["flaky"], final["permanent"]

        assert (echo["status"], echo["result"]) == ("succeeded", {"hello": "world"})
        assert echo["attempt_count"] == 1

        assert long["status"] == "succeeded", long
        assert long["result"] == {
            "message": "Long computation completed successfully",
            "duration": 1,
        }
        assert long["progress"] == 100
        assert long["queue"] == "io"
        assert long["attempts"][0]["worker"].startswith("worker-io@")
        long_started, long_finished = (
            parse_time(long["started_at"]),
            parse_time(long["finished_at"]),
        )
        assert long_started is not None and long_finished is not None
        assert long_finished - long_started >= timedelta(seconds=1)

        assert postponed["status"] == "succeeded", postponed
        assert postponed["result"] == {"later": True}
        started_at = parse_time(postponed["started_at"])
        assert started_at is not None and started_at >= run_at
        history = [(h["from_status"], h["to_status"]) for h in postponed["history"]]
        assert history[:3] == [("", "postponed"), ("postponed", "queued"), ("queued", "running")]

        assert flaky["status"] == "succeeded", flaky
        assert flaky["attempt_count"] == 3
        assert flaky["result"] == {"succeeded_on_attempt": 3}
        assert [a["outcome"] for a in flaky["attempts"]] == ["failed", "failed", "succeeded"]
        assert [h["to_status"] for h in flaky["history"]].count("retrying") == 2

        assert permanent["status"] == "failed", permanent
        assert permanent["attempt_count"] == 1
        assert permanent["error"] == "this input can never work"
        assert permanent["dead_lettered_at"] is not None
        assert "from queue default" in permanent["dead_letter_reason"]

        # Nothing died on the way (the permanent failure and the retries included).
        assert {name: p.returncode for name, p in procs.items()} == dict.fromkeys(PROCESSES)

        # Every process gets SIGTERM at once (as honcho sends it on Ctrl-C) and must end by itself.
        stopping = time.monotonic()
        for process in procs.values():
            process.terminate()
        deadline = stopping + SHUTDOWN_DEADLINE_SECONDS
        codes = {
            name: process.wait(max(0.0, deadline - time.monotonic()))
            for name, process in procs.items()
        }
        timings["stop"] = time.monotonic() - stopping
        assert all(code in CLEAN_EXIT_CODES for code in codes.values()), (
            f"exit codes {codes}\n{dump_logs(procs)}"
        )

    rounded = {phase: round(seconds, 2) for phase, seconds in timings.items()}
    logger.info("e2e timings (s): %s; exit codes: %s", rounded, codes)


def _health(api: Api) -> int:
    try:
        return api.http.get("/health").status_code
    except httpx.TransportError:
        return 0


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_make_run_banner_points_at_the_api_docs_and_admin_of_the_running_web_process():
    port = free_port()
    banner = subprocess.run(
        [sys.executable, "scripts/banner.py"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    base = f"http://127.0.0.1:{port}"
    urls = {"api": f"{base}/api/", "docs": f"{base}/api/docs/", "admin": f"{base}/admin/"}
    for url in urls.values():
        assert url in banner.stdout, banner.stdout
    assert banner.stderr == ""

    # The URLs it prints lead somewhere on a web process started as `make run` starts it.
    with running("web", PORT=str(port), HOST="127.0.0.1") as procs:
        with httpx.Client(timeout=10) as http:
            wait_for(
                lambda: _status(http, f"{base}/health") == 200,
                timeout=30,
                what="gunicorn to answer /health",
            )
            docs = http.get(urls["docs"])
            assert docs.status_code == 200
            assert "swagger" in docs.text.lower()
            admin = http.get(urls["admin"])
            assert admin.status_code == 302
            assert admin.headers["location"].startswith("/admin/login/")
            api = http.get(f"{urls['api']}tasks")
            assert api.status_code == 401  # the API is there, and asks for a token
            assert api.json()["error"]["code"] == "not_authenticated"
        assert procs["web"].returncode is None


def _status(http: httpx.Client, url: str) -> int:
    try:
        return http.get(url).status_code
    except httpx.TransportError:
        return 0


def test_a_process_a_test_leaves_running_is_stopped_at_the_end_of_the_run():
    # What the session's last teardown does (tests/conftest.py), on a process of this test only.
    left = processes.Process("left-running", "sleep 300", processes.test_environment())
    assert left.returncode is None
    assert processes._not_stopped[id(left)] is left
    named = [
        name for name in processes.stop_leftovers() if name == "left-running"
    ]  # (a process another test left would be stopped and named too)
    assert named == ["left-running"]
    assert left.returncode is not None
    assert id(left) not in processes._not_stopped
