"""The staff dashboard in a real browser (Debian's headless Chromium, driven by selenium through
/usr/bin/chromedriver), against the project served by Django's live server and real Celery
workers (the Procfile's commands). `make browser` installs Chromium.

A staff member logs in through the admin, opens the dashboard, watches a task created over the API
appear, report progress and finish, and retries a failed task from the page. The screenshot is
saved as tests/artifacts/dashboard.png.
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Permission
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from apps.accounts.models import User
from apps.monitoring import collectors
from apps.tasks.models import Task
from tests.support import processes
from tests.support.wait import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="taskflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1500",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def workers(broker: Any) -> Iterator[dict[str, processes.Process]]:
    collectors.forget_cached_state()
    with processes.running(
        "worker",
        "worker-io",
        "deadletters",
        WORKER_CONCURRENCY="2",
        IO_WORKER_MIN="1",
        IO_WORKER_MAX="2",
    ) as started:
        yield started
    collectors.forget_cached_state()


def text(driver: WebDriver, css: str) -> str:
    """The text of the first element matching `css`, or "" if there is none. The page redraws
    its parts at every refresh, so an element found may be gone a moment later: ask again."""
    for _ in range(10):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept changing under the test")


def api_token(base_url: str, email: str) -> str:
    response = httpx.post(f"{base_url}/api/login", json={"email": email, "password": PASSWORD})
    response.raise_for_status()
    return str(response.json()["access"])


def test_staff_watch_a_task_finish_and_retry_a_failure_from_the_dashboard(
    live_server: Any,
    browser: WebDriver,
    workers: dict[str, processes.Process],
    request: pytest.FixtureRequest,
) -> None:
    base = live_server.url
    ops = User.objects.create_user(email="ops@example.com", password=PASSWORD, is_staff=True)
    # The dashboard needs is_staff only; the admin's task pages need the view permission, and
    # retrying (here or in the admin) the change permission.
    ops.user_permissions.add(*Permission.objects.filter(codename__in=["view_task", "change_task"]))
    User.objects.create_user(email="alice@example.com", password=PASSWORD)

    # Log in through the admin's form; it sends us on to the dashboard.
    browser.get(f"{base}/admin/login/?next=/admin/dashboard/%3Frefresh%3D1")
    browser.find_element(By.NAME, "username").send_keys("ops@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: text(browser, "#updated-at") not in ("", "never"), what="a first refresh")
    assert text(browser, "#count-queued") == "0"

    # The workers and their queues are on the page.
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, '#workers tr[data-worker^="worker@"]'),
        timeout=30,
        what="the worker in the workers table",
    )
    wait_for(
        lambda: text(browser, '#queues tr[data-queue="io"] td:nth-child(3)') not in ("", "0"),
        what="a consumer on the io queue",
    )

    # Alice creates a task over the API; staff search it by id and watch it run and finish.
    client = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {api_token(base, 'alice@example.com')}"}
    )
    # A kept-alive connection holds a live-server thread, and its database connection, open.
    request.addfinalizer(client.close)
    created = client.post(
        "/api/tasks", json={"type": "long_computation", "payload": {"duration": 8}}
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    # The admin's page of the task follows its progress live too (in a second tab).
    dashboard_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{base}/admin/tasks/task/{task_id}/change/")
    wait_for(lambda: text(browser, "#task-live-status") == "running", what="running in the admin")
    wait_for(
        lambda: text(browser, "#task-live-percent") not in ("", "0%"),
        timeout=20,
        what="progress in the admin",
    )
    browser.close()
    browser.switch_to.window(dashboard_tab)

    browser.find_element(By.ID, "search-id").send_keys(task_id)
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait_for(lambda: text(browser, "#search-status") != "", what="the task found")
    assert text(browser, "#search-task dd:nth-of-type(4)") == "alice@example.com"

    # While it runs, its progress climbs in the "Running now" list.
    running_row = f'#running tr[data-task-id="{task_id}"]'
    wait_for(
        lambda: text(browser, f"{running_row} .bar") not in ("", "0%"),
        timeout=20,
        what="progress of the running task",
    )
    assert "s of 8s" in text(browser, f"{running_row} .bar")
    wait_for(lambda: text(browser, "#search-status") == "succeeded", timeout=30, what="success")
    # Staff stats are cached for a moment (STAFF_STATS_CACHE_SECONDS): the counts follow.
    wait_for(lambda: text(browser, "#count-succeeded") == "1", what="the succeeded count")
    assert "100%" in text(browser, "#search-task .bar")
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, running_row), what="not running")

    # A task that fails shows up in the latest failures, dead-lettered, with a retry button.
    failed = client.post("/api/tasks", json={"type": "test_permanent", "payload": {}})
    failed_id = failed.json()["id"]
    failure_row = f'#failures tr[data-task-id="{failed_id}"]'
    wait_for(
        lambda: "rejected from queue default" in text(browser, failure_row),
        timeout=30,
        what="the failure, dead-lettered, in the table",
    )
    assert "this input can never work" in text(browser, failure_row)
    wait_for(lambda: text(browser, "#count-failed") == "1", what="the failed count")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    browser.find_element(
        By.CSS_SELECTOR, f'{failure_row} button.retry[data-task-id="{failed_id}"]'
    ).click()
    wait_for(lambda: failed_id in text(browser, "#notice"), what="the retry notice")
    assert "retried" in text(browser, "#notice")

    def retried_and_failed_again() -> bool:
        task = Task.objects.get(id=failed_id)
        return task.status == "failed" and task.attempts == 2

    wait_for(retried_and_failed_again, timeout=30, what="the retried task to run again")
    retried = Task.objects.get(id=failed_id)
    assert retried.status_changes.filter(
        note="replayed from the dead-letter queue", actor__email="ops@example.com"
    ).exists()
    # The page shows the second attempt.
    wait_for(
        lambda: text(browser, f"{failure_row} td:nth-child(4)") == "2",
        what="attempt 2 on the page",
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput-chart svg rect.succeeded")
    assert not text(browser, "#banner")
