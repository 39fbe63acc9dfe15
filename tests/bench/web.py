"""HTTP measurements against gunicorn as configured for production: wrk, bulk, and reads."""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.bench.report import percentile

WRK_DIR = Path(__file__).resolve().parent / "wrk"
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(text)
    number, unit = float(match[1]), match[2]
    return number * (60_000.0 if unit == "m" else UNITS[unit])


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {"raw": output}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["requests_per_s"] = float(match[1])
    if match := re.search(r"(\d+) requests in ([\d.]+\w+)", output):
        result["requests"] = int(match[1])
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE):
        result[f"p{pct}_ms"] = _ms(value)
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(match[1]) if match else 0
    match = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = match[1] if match else ""
    return result


def wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    script: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script:
        command += ["-s", str(WRK_DIR / script)]
    command.append(url)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def bulk(
    base_url: str,
    token: str,
    *,
    requests: int,
    size: int,
    warmup: int = 1,
    budget: float = float("inf"),
) -> dict[str, Any]:
    """POST /api/tasks/bulk, `size` tasks each, one after another on one keep-alive connection."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [
        json.dumps(
            {"tasks": [{"type": "echo", "payload": {"r": r, "i": i}} for i in range(size)]}
        ).encode()
        for r in range(requests + warmup)
    ]
    latencies: list[float] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for index, body in enumerate(bodies):
            began = time.perf_counter()
            response = client.post("/api/tasks/bulk", content=body)
            elapsed = time.perf_counter() - began
            if response.status_code != 201:
                raise RuntimeError(f"bulk create: {response.status_code} {response.text[:300]}")
            if index >= warmup:
                latencies.append(elapsed)
                if sum(latencies) > budget:
                    break
    seconds = sum(latencies)
    return {
        "requests": len(latencies),
        "tasks_per_request": size,
        "seconds": seconds,
        "tasks_per_s": len(latencies) * size / seconds if seconds else None,
        "request_p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "request_max_ms": max(latencies) * 1000 if latencies else None,
        "warmup_requests": warmup,
    }


def sample_get(client: httpx.Client, path: str, *, samples: int, warmup: int = 3) -> dict[str, Any]:
    """GET `path` one request at a time on a keep-alive connection; latency percentiles in ms."""
    latencies: list[float] = []
    status = 0
    size = 0
    for index in range(samples + warmup):
        began = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - began) * 1000
        status = response.status_code
        size = len(response.content)
        if status != 200:
            return {"path": path, "status": status, "error": response.text[:300]}
        if index >= warmup:
            latencies.append(elapsed)
    return {
        "path": path,
        "status": status,
        "bytes": size,
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def connections_per_process(port: int) -> list[int]:
    """How many established connections each process holds on the server side of `port`, most
    first (iproute2's ss): how wrk's keep-alive connections fell on the gunicorn workers."""
    done = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    counts: dict[int, int] = {}
    for line in done.stdout.splitlines():
        if "pid=" in line:
            pid = int(line.split("pid=")[1].split(",")[0])
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


class ConnectionSplit:
    """Samples connections_per_process() once, `after` seconds into a wrk run."""

    def __init__(self, port: int, after: float) -> None:
        self.split: list[int] = []
        self._timer = threading.Timer(after, self._sample, args=(port,))

    def _sample(self, port: int) -> None:
        self.split = connections_per_process(port)

    def __enter__(self) -> "ConnectionSplit":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()

    def busiest_share(self) -> float | None:
        """Percent of the connections held by the busiest process (50 = even on two workers)."""
        return 100 * self.split[0] / sum(self.split) if self.split else None
