"""What RabbitMQ and the Celery workers say about themselves: queue depths and consumers (a passive
queue_declare over AMQP, no management plugin needed), and the workers online (Celery's broadcast
inspect, cached briefly in Redis because every call waits for the replies)."""

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core.cache import cache

from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME, TaskQueue

logger = logging.getLogger(__name__)

QUEUES: tuple[str, ...] = (*(str(q) for q in TaskQueue), DEAD_LETTER_QUEUE_NAME)
INSPECT_TIMEOUT_SECONDS = 1.0
WORKERS_FRESH_SECONDS = 10.0  # how long an inspect answer is reused
WORKERS_KEEP_SECONDS = 120  # and kept as a fallback while a refresh is under way
QUEUES_FRESH_SECONDS = 2


def _broker_key(name: str) -> str:
    # Several deployments (or test runs, each with its own vhost) may share one Redis.
    broker = hashlib.sha256(str(settings.CELERY_BROKER_URL).encode()).hexdigest()[:12]
    return f"monitoring:{name}:{broker}"


def _app() -> Any:
    from taskflow.celery import app

    return app


def read_queue_depths() -> list[dict[str, Any]]:
    """Each queue's ready messages and consumers, straight from RabbitMQ (no cache).

    A queue that does not exist is reported with `exists: false`; RabbitMQ down raises.
    """
    out: list[dict[str, Any]] = []
    with _app().connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        channel = conn.channel()
        try:
            for name in QUEUES:
                try:
                    _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    # NOT_FOUND closes the channel: report the queue as missing and go on.
                    out.append({"name": name, "exists": False, "messages": 0, "consumers": 0})
                    channel = conn.channel()
                    continue
                out.append(
                    {
                        "name": name,
                        "exists": True,
                        "messages": int(messages),
                        "consumers": int(consumers),
                    }
                )
        finally:
            channel.close()
    return out


def queue_depths() -> list[dict[str, Any]]:
    """read_queue_depths, shared by all callers for QUEUES_FRESH_SECONDS."""
    key = _broker_key("queues")
    cached = cache.get(key)
    if cached is not None:
        return list(cached)
    depths = read_queue_depths()
    cache.set(key, depths, QUEUES_FRESH_SECONDS)
    return depths


def inspect_workers() -> list[dict[str, Any]]:
    """Ask every worker (broadcast; they answer even with --without-gossip --without-mingle)."""
    inspect = _app().control.inspect(timeout=INSPECT_TIMEOUT_SECONDS)
    # Each call waits for the whole timeout: ask the three questions at once.
    with ThreadPoolExecutor(max_workers=3) as executor:
        asked = [
            executor.submit(ask) for ask in (inspect.stats, inspect.active_queues, inspect.active)
        ]
        stats, queues, active = (future.result() or {} for future in asked)
    workers = []
    for hostname in sorted(set(stats) | set(queues)):
        info = stats.get(hostname) or {}
        pool = info.get("pool") or {}
        autoscaler = info.get("autoscaler") or {}
        workers.append(
            {
                "hostname": hostname,
                "queues": sorted(q["name"] for q in queues.get(hostname) or []),
                "concurrency": pool.get("max-concurrency"),
                "processes": len(pool.get("processes") or []) or None,
                "autoscale_max": autoscaler.get("max"),
                # "celery.concurrency.prefork:TaskPool" -> "prefork"
                "pool": (pool.get("implementation") or "").split(":")[0].rsplit(".", 1)[-1] or None,
                "active": len(active.get(hostname) or []),
                "pid": info.get("pid"),
            }
        )
    return workers


def workers_online() -> dict[str, Any]:
    """The workers, as inspect last saw them: fresh for WORKERS_FRESH_SECONDS; then one caller
    refreshes (a Redis lock) while the others get the previous answer."""
    key = _broker_key("workers")
    cached = cache.get(key)
    now = time.time()
    if cached is not None and now - cached["at"] < WORKERS_FRESH_SECONDS:
        return dict(cached)
    if cached is not None and not cache.add(f"{key}:lock", 1, int(INSPECT_TIMEOUT_SECONDS * 5)):
        return dict(cached)  # someone else refreshes it
    try:
        workers = inspect_workers()
    except Exception as exc:
        logger.warning("Could not inspect the workers: %s", exc)
        if cached is not None:
            return dict(cached)
        raise
    finally:
        cache.delete(f"{key}:lock")
    answer = {"at": now, "workers": workers}
    cache.set(key, answer, WORKERS_KEEP_SECONDS)
    return answer


def forget_cached_state() -> None:
    """Drop the cached broker answers (tests, and after a topology change)."""
    cache.delete_many([_broker_key("queues"), _broker_key("workers")])
