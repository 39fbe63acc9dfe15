"""What the bench runs, and how much of it: `make bench` (full) and `make bench-quick`.

Every N has a command-line option: python -m tests.bench --quick --pipeline-n 5000 ...
"""

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class BenchConfig:
    pipeline_n: int = 20_000  # platform pipeline, and each bare Celery baseline
    concurrency: int = 4  # WORKER_CONCURRENCY of the platform worker and of the bare worker
    api_seconds: float = 15.0  # each wrk run (GET /health, POST /api/tasks)
    api_connections: int = 16
    bulk_requests: int = 20
    bulk_size: int = 1000
    latency_seconds: float = 20.0  # the half-peak-rate run
    # It creates as the pipeline does (the bulk service), this many tasks a call.
    latency_per_call: int = 50
    # Then single creates (one task a call, as POST /api/tasks), at most this rate: no target.
    # 250/s took more than the two cores (~9 ms of CPU a task end to end: docs/benchmarks.md).
    single_latency_rate: float = 150.0
    single_latency_seconds: float = 10.0
    postponed_n: int = 2000
    postponed_spread: float = 30.0
    memory_total: int = 100_000  # RSS sampled at half of it and at it (succeeded tasks in total)
    scale_rows: int = 1_000_000  # 0 skips the scale section
    scale_users: int = 5
    read_samples: int = 200
    drain_backlog: bool = True  # run the API phase's tasks (else purge them: quicker)
    # deployments/rabbitmq/definitions.json's queue policies on the bench vhost, as the compose
    # broker has them (lazy work queues: docs/benchmarks.md, B7); --no-broker-policies for A/B
    broker_policies: bool = True
    quiet_wait: float = 30.0  # wait up to this long for other work on the machine to stop
    profile: bool = True
    profile_seconds: float = 15.0
    # Time budgets (s): a section stops creating work when its budget is spent and reports the N it
    # reached, so that `make bench` ends in time on a slow or busy machine.
    publish_budget: float = 30.0  # each bare Celery run's publishing
    pipeline_budget: float = 75.0  # the platform pipeline's creating
    drain_budget: float = 45.0  # the API phase's backlog
    bulk_budget: float = 30.0
    memory_budget: float = 240.0
    keep_database: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = {
    "pipeline_n": 2000,
    "api_seconds": 2.0,
    "bulk_requests": 3,
    "bulk_size": 250,
    "latency_seconds": 3.0,
    "single_latency_seconds": 2.0,
    "postponed_n": 200,
    "postponed_spread": 3.0,
    "memory_total": 8000,
    "scale_rows": 50_000,
    "read_samples": 15,
    "profile": False,
    "drain_backlog": False,
    "quiet_wait": 5.0,
    "publish_budget": 2.0,
    "pipeline_budget": 3.0,
    "drain_budget": 5.0,
    "bulk_budget": 4.0,
    "memory_budget": 4.0,
}


def parse(argv: list[str] | None = None) -> tuple[str, BenchConfig]:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, 50k rows (under 2 min)")
    for field in fields(BenchConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = float if field.type in (float, "float") else int
            parser.add_argument(flag, type=kind, default=None)
    args = parser.parse_args(argv)
    config = BenchConfig(**(QUICK if args.quick else {}))  # type: ignore[arg-type]
    for field in fields(BenchConfig):
        value = getattr(args, field.name)
        if value is not None:
            setattr(config, field.name, value)
    return ("quick" if args.quick else "full"), config
