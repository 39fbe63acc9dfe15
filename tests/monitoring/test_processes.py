"""Metrics and logs with the real processes: gunicorn with two worker processes (HTTP metrics in
prometheus multiprocess mode) and a prefork Celery worker with three (task metrics from the
rollups), in production's JSON log format."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.models import User
from apps.tasks.models import Task
from tests.support import processes
from tests.support.wait import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
TOKEN = "e2e-metrics-token-0123456789"
PASSWORD = "correct-horse-battery-staple"
TASKS = 12
# Creates continue past TASKS until both gunicorn processes have answered one, up to this many.
MAX_TASKS = 100


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def json_lines(process: processes.Process) -> list[dict[str, Any]]:
    lines = []
    for line in process.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_metrics_add_up_across_processes_and_logs_are_json(broker: Any, tmp_path: Path) -> None:
    User.objects.create_user(email="alice@example.com", password=PASSWORD)
    port = processes.free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    with processes.running(
        "web",
        "worker",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        # A listening socket per process, so that the kernel spreads new connections by their
        # address; on one shared socket it handed all of a run's connections to one process.
        WEB_REUSE_PORT="1",
        WORKER_CONCURRENCY="3",
        ACCESS_LOG="0",
        LOG_FORMAT="json",
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    ) as started:
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{base}/api/login", json={"email": "alice@example.com", "password": PASSWORD}
        ).json()["access"]
        ids: list[str] = []

        def counting_processes() -> set[str]:
            return {path.name.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}

        while len(ids) < TASKS or (len(counting_processes()) < 2 and len(ids) < MAX_TASKS):
            n = len(ids)
            # A new connection each time, so that both gunicorn processes answer some.
            created = httpx.post(
                f"{base}/api/tasks",
                json={"type": "echo", "payload": {"n": n}},
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": f"e2e-{n}"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["X-Request-ID"] == f"e2e-{n}"
            ids.append(created.json()["id"])
        total = len(ids)
        wait_for(
            lambda: Task.objects.filter(id__in=ids, status="succeeded").count() == total,
            timeout=60,
            what="every task to succeed",
        )

        with httpx.Client(base_url=base) as http:
            # Whichever gunicorn process answers, the numbers are the same: the sum of all.
            scrapes = [scrape(http) for _ in range(4)]
        posts = (
            "taskflow_http_requests_total",
            (("method", "POST"), ("route", "task-list"), ("status", "201")),
        )
        assert {s[posts] for s in scrapes} == {total}
        pids = counting_processes()
        assert len(pids) == 2, f"both gunicorn processes counted requests: {pids}"

        samples = scrapes[-1]
        echo = (("type", "echo"),)
        assert samples[("taskflow_tasks_created_total", echo)] == total
        assert samples[("taskflow_tasks_started_total", echo)] == total
        assert samples[("taskflow_tasks_succeeded_total", echo)] == total
        assert samples[("taskflow_task_run_seconds_count", echo)] == total
        wait_inf = ("taskflow_task_queue_wait_seconds_bucket", (("le", "+Inf"), *echo))
        assert samples[wait_inf] == total
        assert samples[("taskflow_workers_online", ())] == 1
        [concurrency] = [
            value for (name, _), value in samples.items() if name == "taskflow_worker_concurrency"
        ]
        assert concurrency == 3
        assert samples[("taskflow_queue_consumers", (("queue", "default"),))] == 1

        # The web process's lines: one per request, with its id and the user.
        web_lines = [e for e in json_lines(started["web"]) if e.get("logger") == "taskflow.http"]
        alice = User.objects.get(email="alice@example.com").id
        created_lines = [e for e in web_lines if e.get("request_id", "").startswith("e2e-")]
        assert len(created_lines) == total
        assert {e["user_id"] for e in created_lines} == {alice}
        assert {e["route"] for e in created_lines} == {"task-list"}

        # The worker's lines while a task runs carry the task, its type and the attempt.
        worker_lines = json_lines(started["worker"])
        traced = [e for e in worker_lines if e.get("logger") == "celery.app.trace"]
        assert {e["task_id"] for e in traced} == set(ids)
        assert {e["task_type"] for e in traced} == {"echo"}
        assert {e["attempt"] for e in traced} == {1}


def test_beat_schedules_the_rollup_fold_when_it_starts(broker: Any) -> None:
    from django_celery_beat.models import PeriodicTask

    from apps.monitoring.tasks import FOLD_TASK_NAME

    assert not PeriodicTask.objects.filter(task=FOLD_TASK_NAME).exists()
    with processes.running("beat"):
        wait_for(
            lambda: PeriodicTask.objects.filter(task=FOLD_TASK_NAME, enabled=True).exists(),
            what="the fold schedule",
        )
