"""The soak's load: mixed task types created over HTTP at a steady rate.

Every task created is recorded with what it is expected to end as and the key its side effect can
be found by (a marker file line, a mail's Message-ID, a hit on the local HTTP server). A POST that
fails (5xx, timeout: a fault is cutting the web process off) is sent again with the same
Idempotency-Key, so a task the server created but whose answer was lost is still accounted for.
"""

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.http import HttpServer

# type: weight in the mix
MIX = {
    "echo": 18,
    "test_sleep": 15,
    "long_computation": 8,
    "send_email": 10,
    "process_image": 8,
    "download_files": 8,
    "fetch_url": 8,
    "test_flaky": 12,
    "test_permanent": 6,
    "test_crash": 1,
}
EXPECTED_TO_FAIL = {"test_permanent", "test_crash"}
POSTPONED_SHARE = 0.15
CANCELLED_SHARE = 0.2  # of the postponed tasks: cancelled over HTTP right after they are created
RETRY_FOR_SECONDS = 30.0  # a POST that failed is sent again (same Idempotency-Key) this long
MAX_IN_FLIGHT = 64  # requests waiting for an answer; beyond it the pacer skips (and counts) a beat


@dataclass(frozen=True)
class Created:
    id: str
    type: str
    expect: str  # the final status expected: "succeeded", "failed", "cancelled", or "a|b"
    key: str  # the side effect's key: "" when the task has none outside the database
    postponed: bool


@dataclass(frozen=True)
class Plan:
    type: str
    payload: dict[str, Any]
    max_retries: int
    delay: float  # run_at this many seconds after the POST; 0: run at once
    cancel: bool  # POST /api/tasks/<id>/cancel once it is created (postponed tasks only)
    key: str
    idempotency_key: str


class Load:
    def __init__(
        self,
        *,
        base_url: str,
        tokens: list[str],
        images: dict[str, str],
        rate: float,
        rng: random.Random,
        marker: Path,
        http: HttpServer,
    ) -> None:
        self.tokens = tokens
        self.images = images  # token -> the id of that user's uploaded image
        self.rate = rate
        self.rng = rng
        self.marker = marker
        self.http = http
        self.client = httpx.Client(
            base_url=base_url,
            timeout=15,
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=16),
        )
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="soak-load")
        self.lock = threading.Lock()
        self.created: list[Created] = []
        self.responses: Counter[str] = Counter()  # status code or error name, every POST sent
        self.outcomes: Counter[str] = Counter()  # per planned task: accepted / refused / skipped
        self.latencies: list[float] = []  # seconds, accepted POSTs
        self.refusals: list[dict[str, Any]] = []  # the first 4xx answers, for the report
        self.in_flight = 0
        self.planned = 0

    # --- what to create --------------------------------------------------------------------------
    def plan(self) -> tuple[Plan, str]:
        self.planned += 1
        n = self.planned
        rng = self.rng
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        token = rng.choice(self.tokens)
        key = ""
        max_retries = 5  # room for the faults' lost attempts on top of planned failures
        payload: dict[str, Any]
        if kind == "echo":
            payload = {"n": n}
        elif kind == "test_sleep":
            payload = {"seconds": round(rng.uniform(0.05, 0.5), 2), "marker": str(self.marker)}
            key = "marker"
        elif kind == "long_computation":
            payload = {"duration": rng.choice([0.2, 0.5, 1.0, 2.0])}
        elif kind == "send_email":
            payload = {"to": [f"soak-{n}@example.com"], "subject": f"soak {n}", "body": "soak\n"}
            if rng.random() < 0.3:
                payload["attached_files"] = [self.images[token]]
            key = "mail"
        elif kind == "process_image":
            payload = {"path": self.images[token], "blur": 1, "grayscale": rng.random() < 0.5}
        elif kind == "download_files":
            key = f"download-{uuid.uuid4().hex}"
            payload = {"urls": [self.http.url(f"/flaky/{key}/0")]}
        elif kind == "fetch_url":
            key = f"fetch-{uuid.uuid4().hex}"
            payload = {"url": self.http.url(f"/flaky/{key}/0")}
        elif kind == "test_flaky":
            payload = {"fail_times": rng.randint(1, 2)}
        elif kind == "test_crash":
            payload, max_retries = {}, 1  # kills its pool process on each of its 2 deliveries
        else:
            payload, max_retries = {}, 0
        delay = (
            round(rng.uniform(1, 8), 2)
            if kind != "test_crash" and rng.random() < POSTPONED_SHARE
            else 0.0
        )
        cancel = bool(delay) and rng.random() < CANCELLED_SHARE
        plan = Plan(kind, payload, max_retries, delay, cancel, key, f"soak-{uuid.uuid4().hex}")
        return plan, token

    # --- sending ---------------------------------------------------------------------------------
    def send(self, plan: Plan, token: str) -> None:
        body: dict[str, Any] = {
            "type": plan.type,
            "payload": plan.payload,
            "max_retries": plan.max_retries,
        }
        if plan.delay:
            run_at = datetime.now(tz=UTC) + timedelta(seconds=plan.delay)
            body["run_at"] = run_at.isoformat().replace("+00:00", "Z")
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": plan.idempotency_key}
        outcome = "refused"
        give_up_at = time.monotonic() + RETRY_FOR_SECONDS
        attempt = 0
        try:
            while time.monotonic() < give_up_at:
                attempt += 1
                began = time.monotonic()
                try:
                    response = self.client.post("/api/tasks", json=body, headers=headers)
                except httpx.HTTPError as exc:
                    self._count(type(exc).__name__)
                    time.sleep(min(4.0, 0.25 * 2**attempt))  # the client's backoff
                    continue
                self._count(str(response.status_code))
                if response.status_code in (200, 201):
                    task = response.json()
                    expect = "failed" if plan.type in EXPECTED_TO_FAIL else "succeeded"
                    if plan.cancel:
                        expect = self.cancel(task["id"], headers, expect)
                    created = Created(task["id"], plan.type, expect, plan.key, bool(plan.delay))
                    with self.lock:
                        self.created.append(created)
                        self.latencies.append(time.monotonic() - began)
                    outcome = "accepted"
                    return
                if response.status_code < 500:
                    outcome = f"refused {response.status_code}"
                    with self.lock:
                        if len(self.refusals) < 20:
                            self.refusals.append(
                                {
                                    "status": response.status_code,
                                    "body": response.text[:500],
                                    "try": attempt,
                                    "type": plan.type,
                                }
                            )
                    return
                time.sleep(min(4.0, 0.25 * 2**attempt))
        finally:
            with self.lock:
                self.outcomes[outcome] += 1
                self.in_flight -= 1

    def cancel(self, task_id: str, headers: dict[str, str], expect: str) -> str:
        """Cancel a postponed task; what it is expected to end as."""
        try:
            response = self.client.post(f"/api/tasks/{task_id}/cancel", headers=headers)
        except httpx.HTTPError as exc:
            self._count(f"cancel {type(exc).__name__}")
            return f"cancelled|{expect}"  # the cancel may or may not have been done
        self._count(f"cancel {response.status_code}")
        if response.status_code == 200 and response.json()["status"] == "cancelled":
            return "cancelled"
        return f"cancelled|{expect}"

    def _count(self, what: str) -> None:
        with self.lock:
            self.responses[what] += 1

    def run(self, stop: threading.Event) -> None:
        """Create tasks at `rate` per second until `stop` is set."""
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not stop.is_set():
            plan, token = self.plan()
            with self.lock:
                busy = self.in_flight >= MAX_IN_FLIGHT
                if busy:
                    self.outcomes["skipped (client backlog)"] += 1
                else:
                    self.in_flight += 1
            if not busy:
                self.pool.submit(self.send, plan, token)
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        """Wait for the POSTs still out, then close the client."""
        self.pool.shutdown(wait=True)
        self.client.close()
