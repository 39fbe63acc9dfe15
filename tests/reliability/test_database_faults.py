"""PostgreSQL connections cut under a worker: it survives, and affected tasks are retried."""

import pytest
from django.db import connection

from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.reliability.conftest import all_final, assert_each_succeeded_once
from tests.support import processes
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

pytestmark = [pytest.mark.django_db(transaction=True)]
S = TaskStatus


def test_a_worker_survives_its_database_connections_being_cut(user, broker, marker):
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)
    with TcpProxy(host, port) as proxy:
        env = processes.test_environment(WORKER_CONCURRENCY="2")
        env["DATABASE_URL"] = proxy.url_for(env["DATABASE_URL"])
        worker = processes.start("worker", env=env)
        try:
            with processes.running("beat"):  # beat reaches PostgreSQL directly
                tasks = [
                    create_task(user, "test_sleep", {"seconds": 0.05, "marker": str(marker)})
                    for _ in range(200)
                ]
                ids = [t.id for t in tasks]
                wait_for(
                    lambda: Task.objects.filter(id__in=ids, status=S.SUCCEEDED).count() >= 20,
                    what="the first tasks to run",
                )
                proxy.cut()
                wait_for(
                    lambda: "database unavailable" in worker.log(),
                    what="the worker to hand back a message while the database is away",
                )
                proxy.restore()
                all_final(ids, timeout=180)
            assert worker.popen.poll() is None, "the worker died"
        finally:
            worker.stop()
    assert_each_succeeded_once(ids)
