"""Prometheus metrics (GET /metrics).

- Task metrics come from shared state, read at scrape time by TaskflowCollector: the rollups in
  PostgreSQL (which every worker process writes through triggers) and RabbitMQ's queues. So they
  are right however many worker processes, hosts or restarts there are, with no files to share.
- HTTP metrics are counted in the web process by apps.monitoring.middleware, with
  prometheus_client. gunicorn runs several worker processes, so they use prometheus_client's
  multiprocess mode: each process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set by
  taskflow/gunicorn.conf.py), and a scrape, whichever process answers it, adds up every process's
  files.
"""

import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from apps.monitoring import collectors, selectors
from apps.monitoring.models import HISTOGRAM_BOUNDS

logger = logging.getLogger(__name__)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_REQUESTS = Counter(
    "taskflow_http_requests",
    "HTTP requests answered, by route (Django URL name), method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "taskflow_http_request_duration_seconds",
    "Time to answer an HTTP request, by route, method and status code.",
    ["route", "method", "status"],
    buckets=HTTP_BUCKETS,
)

# The task event counters: (metric suffix, rollup column, help).
TASK_COUNTERS = (
    ("created", "created", "Tasks created."),
    ("started", "started", "Attempts started (claimed by a worker)."),
    ("succeeded", "succeeded", "Tasks succeeded."),
    ("failed", "failed", "Tasks failed for good (a permanent error or out of retries)."),
    ("retried", "retried", "Attempts that failed with retries left (the task waits to retry)."),
    ("cancelled", "cancelled", "Tasks cancelled."),
    ("dead_lettered", "dead_lettered", "Dead letters recorded by the dead-letter consumer."),
    ("replayed", "replayed", "Failed or cancelled tasks retried by hand."),
)


def _histogram_buckets(buckets: list[int]) -> list[tuple[str, float]]:
    out, cumulative = [], 0
    for bound, count in zip(HISTOGRAM_BOUNDS, buckets, strict=True):
        cumulative += count
        out.append(("+Inf" if math.isinf(bound) else repr(float(bound)), float(cumulative)))
    return out


class TaskflowCollector(Collector):
    """Task, queue and worker metrics, read from PostgreSQL, RabbitMQ and the workers at scrape."""

    def collect(self) -> Iterator[Any]:
        yield from self._task_metrics()
        yield from self._queue_metrics()
        yield from self._worker_metrics()

    def _task_metrics(self) -> Iterator[Any]:
        started = time.monotonic()
        try:
            counts = selectors.task_counts(owner_id=None)
            totals = selectors.total_events()
        except Exception as exc:  # the database is away: say so, and serve the rest
            logger.warning("Task metrics unavailable: %s", exc)
            yield GaugeMetricFamily(
                "taskflow_database_up", "1 if the task metrics could be read.", value=0
            )
            return
        yield GaugeMetricFamily(
            "taskflow_database_up", "1 if the task metrics could be read.", value=1
        )
        tasks = GaugeMetricFamily(
            "taskflow_tasks", "Tasks that exist now, by type and status.", labels=["type", "status"]
        )
        for type_, statuses in sorted(counts.items()):
            for status, n in sorted(statuses.items()):
                tasks.add_metric([type_, status], n)
        yield tasks
        for suffix, column, help_text in TASK_COUNTERS:
            family = CounterMetricFamily(f"taskflow_tasks_{suffix}", help_text, labels=["type"])
            for type_, item in sorted(totals.items()):
                family.add_metric([type_], item.events[column])
            yield family
        for name, attribute, help_text in (
            (
                "taskflow_task_queue_wait_seconds",
                "wait",
                "Time from a task's (re)queueing to its claim by a worker, per attempt.",
            ),
            (
                "taskflow_task_run_seconds",
                "run",
                "Run time of an attempt that ended (succeeded, failed or cancelled).",
            ),
        ):
            histogram = HistogramMetricFamily(name, help_text, labels=["type"])
            for type_, item in sorted(totals.items()):
                timing = getattr(item, attribute)
                histogram.add_metric([type_], _histogram_buckets(timing.buckets), timing.sum)
            yield histogram
        yield GaugeMetricFamily(
            "taskflow_metrics_task_read_seconds",
            "Time this scrape took to read the task rollups.",
            value=time.monotonic() - started,
        )

    def _queue_metrics(self) -> Iterator[Any]:
        try:
            depths = collectors.queue_depths()
        except Exception as exc:
            logger.warning("Queue metrics unavailable: %s", exc)
            yield GaugeMetricFamily("taskflow_broker_up", "1 if RabbitMQ answered.", value=0)
            return
        yield GaugeMetricFamily("taskflow_broker_up", "1 if RabbitMQ answered.", value=1)
        messages = GaugeMetricFamily(
            "taskflow_queue_messages",
            "Messages ready in each RabbitMQ queue (taskflow.deadletter is the dead-letter queue).",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "taskflow_queue_consumers", "Consumers of each RabbitMQ queue.", labels=["queue"]
        )
        for queue in depths:
            messages.add_metric([queue["name"]], queue["messages"])
            consumers.add_metric([queue["name"]], queue["consumers"])
        yield messages
        yield consumers

    def _worker_metrics(self) -> Iterator[Any]:
        try:
            workers = collectors.workers_online()["workers"]
        except Exception as exc:
            logger.warning("Worker metrics unavailable: %s", exc)
            return
        yield GaugeMetricFamily(
            "taskflow_workers_online", "Celery workers that answered inspect.", value=len(workers)
        )
        per_queue = GaugeMetricFamily(
            "taskflow_queue_workers", "Workers that consume each queue.", labels=["queue"]
        )
        for queue in collectors.QUEUES:
            per_queue.add_metric([queue], sum(queue in w["queues"] for w in workers))
        yield per_queue
        concurrency = GaugeMetricFamily(
            "taskflow_worker_concurrency",
            "Pool size (processes or threads) of each worker.",
            labels=["worker"],
        )
        active = GaugeMetricFamily(
            "taskflow_worker_active_tasks",
            "Messages each worker is executing now.",
            labels=["worker"],
        )
        for worker in workers:
            concurrency.add_metric([worker["hostname"]], worker["concurrency"] or 0)
            active.add_metric([worker["hostname"]], worker["active"])
        yield concurrency
        yield active


def render() -> bytes:
    """Every metric in Prometheus' text format."""
    registry: CollectorRegistry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_DefaultRegistryProxy())
    registry.register(TaskflowCollector())
    return generate_latest(registry)


class _DefaultRegistryProxy(Collector):
    """The process's own metrics (one process: runserver, tests) inside a fresh registry."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def metrics_response() -> HttpResponse:
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
