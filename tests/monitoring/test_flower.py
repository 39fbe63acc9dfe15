"""Flower, as `make flower` and the compose service run it, on the same broker as the workers."""

from typing import Any

import httpx
import pytest

from tests.support import processes
from tests.support.wait import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_flower_sees_the_workers_on_the_same_broker(broker: Any) -> None:
    port = processes.free_port()
    # As in deployments/docker-compose.yml: Flower's API needs its basic-auth login.
    env = processes.test_environment(FLOWER_BASIC_AUTH="ops:flower-secret")
    auth = ("ops", "flower-secret")
    with processes.running("worker", WORKER_CONCURRENCY="1"):
        flower = processes.Process(
            "flower", f"celery -A taskflow flower --address=127.0.0.1 --port={port}", env
        )
        try:
            flower.wait_for_log("Visit me at", timeout=60)
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthcheck").text == "OK"
            assert httpx.get(f"{base}/api/workers").status_code == 401

            def workers() -> dict[str, Any]:
                response = httpx.get(
                    f"{base}/api/workers", params={"refresh": 1}, auth=auth, timeout=10
                )
                return response.json() if response.status_code == 200 else {}

            seen = wait_for(workers, timeout=30, what="Flower to list the worker")
            [name] = [name for name in seen if name.startswith("worker@")]
            queues = {q["name"] for q in seen[name]["active_queues"]}
            assert queues == {"default", "cpu", "maintenance"}
        finally:
            flower.stop(timeout=10)
