"""gunicorn settings, from the environment (the same in `make run`, compose and production)."""

import glob
import os
import shutil
import sys
import tempfile
from typing import Any

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
# WEB_REUSE_PORT=1: each worker listens on a socket of its own (SO_REUSEPORT) and the kernel
# spreads new connections over them. On the one shared socket (0), whichever worker wakes first
# accepts: a burst of keep-alive connections can all land on one worker, which then serves them
# alone on one core (docs/benchmarks.md, A12). But a stopping worker (a deploy, WEB_MAX_REQUESTS)
# stops accepting on its own socket while the kernel still queues new connections there, and
# resets them when it exits (~7 reset connections per worker stop at 1,700 new connections/s),
# unless net.ipv4.tcp_migrate_req=1 (Linux 5.14+) moves them to the other workers' sockets.
# Unset or empty: on exactly when the kernel does that (the compose file sets it for the api).
MIGRATE_REQUESTS_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


def reuse_port_by_default(sysctl: str = MIGRATE_REQUESTS_SYSCTL) -> bool:
    try:
        with open(sysctl) as setting:
            return setting.read().strip() == "1"
    except OSError:  # an older kernel, or no /proc: the shared socket
        return False


_reuse_port_setting = os.environ.get("WEB_REUSE_PORT", "")
reuse_port = _reuse_port_setting == "1" if _reuse_port_setting else reuse_port_by_default()
keepalive = 5
timeout = 30
graceful_timeout = 20
accesslog = "-" if os.environ.get("ACCESS_LOG", "1") == "1" else None
# gunicorn's default, less %(u)s: the user name of a Basic Authorization header. No part of any
# Authorization header (nor any other request header but Referer and User-Agent) is logged.
access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
# A worker is replaced after this many requests (a guard against slow leaks). Every replacement
# imports Django again (1-2 s of CPU) and serves its first requests cold: at 5000, /health alone
# at 700 req/s replaced each worker every ~15 s (import frames were up to 16% of a profile).
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "50000"))
max_requests_jitter = max_requests // 10

# Prometheus' multiprocess mode: each worker process writes its HTTP metrics to files in this
# directory, and /metrics (answered by any of them) adds up all the files. A fresh, empty
# directory per start, unless PROMETHEUS_MULTIPROC_DIR names one (then it is emptied).
_metrics_dir_given = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="taskflow-metrics-"
)
for _stale in glob.glob(os.path.join(_metrics_dir, "*.db")):
    os.remove(_stale)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir  # inherited by the workers


def child_exit(server: object, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: object) -> None:
    if not _metrics_dir_given:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def post_worker_init(worker: Any) -> None:
    # The application is loaded: the creates' messages are published, and published_at written,
    # by threads of this worker, off the request path (apps.tasks.publisher.RequestPublishing,
    # PublishedMarks).
    from apps.tasks.publisher import marks, request_publishing
    from taskflow.startup import freeze_loaded_objects

    request_publishing.start()
    marks.start()
    freeze_loaded_objects()


def worker_exit(server: object, worker: Any) -> None:
    # A worker that stops (a deploy, WEB_MAX_REQUESTS) publishes and marks what its threads
    # still hold; a worker killed outright leaves that to republish_unconfirmed. gunicorn also
    # calls this in the arbiter, for a worker it found gone, where the application (and Django)
    # was never loaded: nothing to do there.
    publisher = sys.modules.get("apps.tasks.publisher")
    if publisher is None:
        return
    publisher.request_publishing.stop()
    publisher.marks.stop()
