"""Health checks of TaskFlow's processes, for docker compose and Kubernetes probes.

    python deployments/healthcheck.py api           the API answers GET /health
    python deployments/healthcheck.py worker NAME   worker NAME@<this host> answers a ping
    python deployments/healthcheck.py beat          beat has sent the releaser lately
    python deployments/healthcheck.py deadletters   the dead-letter queue has a consumer

Exits 0 when healthy, 1 otherwise, and prints one line saying why.
"""

import functools
import os
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# django-celery-beat writes last_run_at to the database every 3 minutes (Celery's sync_every), so
# a healthy beat's row can be that old; two sync periods without a write mean beat is stuck.
BEAT_MAX_AGE = timedelta(minutes=6)


class Unhealthy(Exception):
    pass


def _setup_django() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskflow.settings")
    import django

    django.setup()


def allowed_host() -> str:
    """A Host header that Django accepts: the first concrete name in ALLOWED_HOSTS."""
    for host in os.environ.get("ALLOWED_HOSTS", "localhost").split(","):
        host = host.strip().lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def check_api() -> str:
    port = os.environ.get("PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    request = urllib.request.Request(url, headers={"Host": allowed_host()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:  # noqa: S310 (fixed scheme)
            status = response.status
    except OSError as exc:  # URLError and HTTPError included
        raise Unhealthy(f"GET {url}: {exc}") from exc
    if status != 200:
        raise Unhealthy(f"GET {url}: HTTP {status}")
    return f"API answers on port {port}"


def check_worker(name: str) -> str:
    _setup_django()
    from celery.utils.nodenames import host_format

    from taskflow.celery import app

    node = host_format(f"{name}@%h")
    replies = app.control.ping(destination=[node], timeout=5.0) or []
    if not any(node in reply for reply in replies):
        raise Unhealthy(f"worker {node} did not answer a ping")
    return f"worker {node} answers"


def check_beat() -> str:
    _setup_django()
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask

    from apps.tasks.schedules import RELEASE_SCHEDULE_NAME

    task = PeriodicTask.objects.filter(name=RELEASE_SCHEDULE_NAME).only("last_run_at").first()
    if task is None:
        raise Unhealthy(f"no schedule {RELEASE_SCHEDULE_NAME!r}: run `manage.py setup_broker`")
    if task.last_run_at is None or timezone.now() - task.last_run_at > BEAT_MAX_AGE:
        raise Unhealthy(f"beat has not sent {RELEASE_SCHEDULE_NAME!r} since {task.last_run_at}")
    return f"beat sent the releaser at {task.last_run_at:%H:%M:%S}"


def check_deadletters() -> str:
    _setup_django()
    from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME
    from taskflow.celery import app

    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=4)
        channel: Any = connection.default_channel
        _, _, consumers = channel.queue_declare(queue=DEAD_LETTER_QUEUE_NAME, passive=True)
    if not consumers:
        raise Unhealthy(f"nobody consumes {DEAD_LETTER_QUEUE_NAME}")
    return f"{consumers} consumer(s) on {DEAD_LETTER_QUEUE_NAME}"


def run(argv: list[str]) -> int:
    match argv:
        case ["api"]:
            check = check_api
        case ["worker", name]:
            check = functools.partial(check_worker, name)
        case ["beat"]:
            check = check_beat
        case ["deadletters"]:
            check = check_deadletters
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    try:
        print(check())
    except Exception as exc:
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
