"""Results: one line per measured value, with its target; a table on stdout, JSON on disk."""

import json
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.environment import ROOT

RESULTS_DIR = ROOT / "bench-results"


@dataclass
class Line:
    section: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    passed: bool | None = None  # None: no target, or not measured
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "n/a" if self.value is None else ""
        return "ok" if self.passed else "MISSED"

    def shown_value(self) -> str:
        if self.value is None:
            return self.note or "not available"
        if self.unit in {"x", "ratio"}:
            return f"{self.value:.2f}"
        if abs(self.value) >= 100:
            return f"{self.value:,.0f}"
        return f"{self.value:.1f}"


@dataclass
class Report:
    mode: str
    config: dict[str, Any]
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    lines: list[Line] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        section: str,
        name: str,
        value: float | None,
        unit: str,
        *,
        target: str = "",
        passed: bool | None = None,
        note: str = "",
    ) -> Line:
        line = Line(section, name, value, unit, target, passed, note)
        self.lines.append(line)
        print(f"  {name}: {line.shown_value()} {unit} {line.verdict}", flush=True)
        return line

    def at_least(
        self, section: str, name: str, value: float | None, unit: str, floor: float, target: str
    ) -> Line:
        passed = None if value is None else value >= floor
        return self.add(section, name, value, unit, target=target, passed=passed)

    def under(
        self, section: str, name: str, value: float | None, unit: str, ceiling: float, target: str
    ) -> Line:
        passed = None if value is None else value < ceiling
        return self.add(section, name, value, unit, target=target, passed=passed)

    # --- output ----------------------------------------------------------------------------------
    def table(self) -> str:
        rows = [("section", "measure", "value", "unit", "target", "result")]
        rows += [
            (ln.section, ln.name, ln.shown_value(), ln.unit, ln.target, ln.verdict)
            for ln in self.lines
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out = []
        for index, row in enumerate(rows):
            out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
            if index == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def markdown(self) -> str:
        out = [
            "| section | measure | value | unit | target | result |",
            "|---|---|---:|---|---|---|",
        ]
        for ln in self.lines:
            verdict = "**MISSED**" if ln.verdict == "MISSED" else ln.verdict
            out.append(
                f"| {ln.section} | {ln.name} | {ln.shown_value()} | {ln.unit} | {ln.target} "
                f"| {verdict} |"
            )
        out += [f"\n**Warning:** {warning}" for warning in self.details.get("warnings", [])]
        return "\n".join(out)

    def missed(self) -> list[Line]:
        return [ln for ln in self.lines if ln.passed is False]

    def write(self) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"{stamp}{'-quick' if self.mode == 'quick' else ''}.json"
        body = {
            "mode": self.mode,
            "started": self.started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "config": self.config,
            "durations_s": self.durations,
            "results": [{**asdict(ln), "verdict": ln.verdict or None} for ln in self.lines],
            "details": self.details,
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        path.with_suffix(".md").write_text(self.markdown() + "\n")
        return path


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _version(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return "not found"
    return (
        (result.stdout or result.stderr).strip().splitlines()[0]
        if result.stdout or result.stderr
        else ""
    )


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    packages = ["Django", "djangorestframework", "djangorestframework-simplejwt", "celery"]
    packages += ["kombu", "billiard", "psycopg", "gunicorn", "py-spy"]
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": _cores(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package] = version(package)
        except Exception:
            info[package] = "not installed"
    info["rabbitmq"] = _version("rabbitmqctl", "version")
    info["wrk"] = _version("wrk", "--version")
    return info


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
