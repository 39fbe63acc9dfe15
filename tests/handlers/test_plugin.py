"""The example plugin (docs/examples/taskflow-example-plugin): installed with pip, its type is
listed by the real API process and run by a real worker, with no change to this repository.

pip installs it into a directory of this test's own (--target), which the started processes get
on their PYTHONPATH: an install as real as any (a built wheel, its entry point metadata), without
touching the virtualenv other test runs on this machine share.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from rest_framework_simplejwt.tokens import RefreshToken

from apps.handlers.registry import code_task_types
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.support import processes
from tests.support.processes import ROOT, free_port
from tests.support.wait import wait_for

S = TaskStatus
PLUGIN = ROOT / "docs" / "examples" / "taskflow-example-plugin"
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def pip_install(source: Path, target: Path) -> None:
    """Offline: no index, and the build uses the setuptools and wheel already installed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_installed_example_plugin_is_listed_and_runs_on_a_worker(user, broker, tmp_path):
    source = tmp_path / "taskflow-example-plugin"
    shutil.copytree(PLUGIN, source)  # the build writes next to its sources: not into docs/
    site = tmp_path / "site"
    pip_install(source, site)
    entry_points = next(site.glob("taskflow_example_plugin-*.dist-info")) / "entry_points.txt"
    assert "example = taskflow_example_plugin.handlers" in entry_points.read_text()
    assert "word_count" not in code_task_types()  # nothing in this repository registers it

    port = free_port()
    env = {"PYTHONPATH": f"{ROOT}:{site}", "PORT": str(port), "HOST": "127.0.0.1"}
    with processes.running("web", "worker", **env) as started:
        token = str(RefreshToken.for_user(user).access_token)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as http:
            listed = {t["name"]: t for t in http.get("/api/task-types").json()}
            created = http.post(
                "/api/tasks",
                json={"type": "word_count", "payload": {"text": "The cat and the hat.", "top": 2}},
            )
            refused = http.post("/api/tasks", json={"type": "word_count", "payload": {}})
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            wait_for(
                lambda: Task.objects.filter(id=task_id, status__in=[S.SUCCEEDED, S.FAILED]),
                timeout=60,
                what="word_count to finish",
            )
            shown = http.get(f"/api/tasks/{task_id}").json()
        logs = processes.dump_logs(started)

    word_count = listed["word_count"]
    assert word_count["kind"] == "code"
    assert word_count["description"].startswith("Counts the words")
    assert (word_count["queue"], word_count["default_max_retries"]) == ("default", 2)
    assert set(word_count["payload_schema"]["properties"]) == {"text", "file", "top", "save_report"}
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"payload": ["Give exactly one of text and file."]}
    assert shown["status"] == "succeeded", logs
    assert shown["result"] == {"words": 5, "distinct": 4, "top": [["the", 2], ["cat", 1]]}
    assert shown["progress"] == 100
    assert "counted 5 words (4 distinct)" in logs
