"""The whole benchmark, in one run, in this order (each section's N in tests/bench/config.py):

1. bare Celery (tests/bench/bare_celery.py): no-op, then hand-written bookkeeping
2. web alone (gunicorn as in production): wrk GET /health and POST /api/tasks, then bulk create
3. worker + beat: the API phase's backlog drains, then the pipeline (N echo tasks through the
   bulk service), latency at half the pipeline's rate, postponed precision
4. memory: more tasks until memory_total have succeeded; worker RSS at half and at the end
   (py-spy profiles the worker meanwhile)
5. scale: the task table topped up to scale_rows rows; reads through gunicorn

Own database (taskflow_bench) and vhost (taskflow-bench-*), dropped and deleted at the end.
Results: a table on stdout and bench-results/<timestamp>.json (+ .md); the exit code is 0 even
when a target is missed (it is a report), non-zero only if the bench itself could not run.
"""

import io
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tests.bench.config import BenchConfig, parse
from tests.bench.environment import (
    BenchWorld,
    Broker,
    CpuMonitor,
    cpu_speed_ms,
    process_tree_rss,
    wait_for_quiet,
    wait_until,
)
from tests.bench.report import Report

MB = 1024 * 1024
# Above this spread of the speed probe, the run says the host did not stay the same.
HOST_SPEED_SPREAD_WARNING = 1.25


class Bench:
    def __init__(self, mode: str, config: BenchConfig, world: BenchWorld) -> None:
        self.mode = mode
        self.config = config
        self.world = world
        self.report = Report(mode=mode, config=config.as_dict())
        self.processes: dict[str, Any] = {}
        self.port = 0
        self.users: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}
        self.profile_dir = Path()
        self.pipeline_rate: float | None = None
        self.drain_rate: float | None = None
        self.broker: Broker | None = None
        self.cpu = CpuMonitor()

    # --- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        speed_before = cpu_speed_ms()
        began = time.monotonic()
        cpu = self.cpu.snapshot()
        sessions = self.world.sessions()
        try:
            yield
        except Exception as exc:
            print(f"  !! {name} failed: {exc}", flush=True)
            self.report.details.setdefault("errors", {})[name] = traceback.format_exc()
            self.report.add(name, "section failed", None, "", note=f"error: {exc}"[:120])
        finally:
            self.report.durations[name] = round(time.monotonic() - began, 1)
            shares = self.cpu.shares(cpu)
            self.report.details.setdefault("cpu_share", {})[name] = shares
            sessions_after = self.world.sessions()
            if sessions is not None and sessions_after is not None:
                # Long-lived processes connect once; a steady count means some process reconnects.
                opened = sessions_after - sessions
                self.report.details.setdefault("postgres_sessions", {})[name] = opened
            # The host's speed before and after, outside the section's timings and CPU shares.
            speeds = [round(speed_before, 1), round(cpu_speed_ms(), 1)]
            self.report.details.setdefault("cpu_speed_ms", {})[name] = speeds
            print(
                f"  (CPU, share of {self.cpu.cores} cores: bench {shares['bench']:.0%}, "
                f"services {shares['services']:.0%}, other processes {shares['others']:.0%}; "
                f"speed probe {speeds[0]:.0f} -> {speeds[1]:.0f} ms)",
                flush=True,
            )

    def start(self, name: str, command: str | None = None, **env: str) -> Any:
        from tests.support.processes import Process, procfile

        process = Process(name, command or procfile()[name], self.world.process_env(**env))
        self.processes[name] = process
        return process

    def stop(self, *names: str) -> None:
        for name in names:
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop(timeout=30)

    def _alive(self, process: Any) -> None:
        if process.returncode is not None:
            raise RuntimeError(f"{process.name} exited:\n{process.log()[-3000:]}")

    def wait_consuming(self, process: Any, queue: str, pool: int) -> None:
        """A worker is ready when it consumes `queue` and its pool processes are all up."""
        assert self.broker is not None
        broker = self.broker

        def ready() -> bool:
            self._alive(process)
            return (
                broker.exists(queue)
                and broker.depth(queue)[1] > 0
                and len(process_tree_rss(process.pid)) > pool
            )

        wait_until(ready, timeout=90, what=f"{process.name} to consume {queue}", interval=0.2)

    def wait_web(self, process: Any) -> None:
        import httpx

        def ready() -> bool:
            self._alive(process)
            with suppress(httpx.HTTPError):
                return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
            return False

        wait_until(ready, timeout=60, what="gunicorn to answer /health", interval=0.2)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def profile(self, name: str, pid: int, *, idle: bool = False) -> Any:
        from tests.bench import profiling

        if not self.config.profile:
            return None
        return profiling.record(
            pid, self.config.profile_seconds, self.profile_dir / f"{name}.txt", idle=idle
        )

    def summarise_profile(self, name: str, recorder: Any) -> None:
        from tests.bench import profiling

        if recorder is None:
            return
        profiling.finish(recorder, timeout=self.config.profile_seconds + 60)
        summary = profiling.summarise(self.profile_dir / f"{name}.txt")
        summary["collapsed_stacks"] = str(self.profile_dir / f"{name}.txt")
        self.report.details.setdefault("profiles", {})[name] = summary
        print(f"  profile {name}:\n{profiling.render(summary)}", flush=True)

    # --- sections --------------------------------------------------------------------------------
    def setup(self) -> None:
        import django

        django.setup()
        from django.core.management import call_command
        from rest_framework_simplejwt.tokens import AccessToken

        from apps.accounts.models import User
        from tests.bench import bare_celery
        from tests.support.processes import free_port

        call_command("migrate", verbosity=0)
        policies = ["--require-policies"] if self.config.broker_policies else []
        call_command("setup_broker", *policies, stdout=io.StringIO())
        self.broker = Broker(self.world.broker_url)
        roles = ["api", "bulk", "pipeline", "latency", "single", "postponed", "memory", "admin"]
        roles += [f"seed{i}" for i in range(self.config.scale_users)]
        for role in roles:
            self.users[role] = User.objects.create_user(
                f"bench-{role}@example.com",
                is_staff=role == "admin",
                is_superuser=role == "admin",
            )
            self.tokens[role] = str(AccessToken.for_user(self.users[role]))
        self.port = free_port()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.profile_dir = (
            Path(__file__).resolve().parents[2] / "bench-results" / f"{stamp}-profiles"
        )
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        with __import__("psycopg").connect(self.world.database_url, autocommit=True) as conn:
            conn.execute(bare_celery.SCHEMA)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            row = cursor.fetchone()
        self.report.details["postgresql_server"] = row[0] if row else ""
        from tests.bench import pipeline

        probe = pipeline.probe_postgres(self.world.database_url)
        self.report.details["postgres_probe"] = probe
        self.report.add(
            "machine", "PostgreSQL round trip (SELECT 1) p50", probe["select_p50_ms"], "ms"
        )
        self.report.add(
            "machine", "PostgreSQL one-row INSERT + commit p50", probe["commit_p50_ms"], "ms"
        )
        self.report.add(
            "machine", "PostgreSQL one-row INSERT + commit p99", probe["commit_p99_ms"], "ms"
        )

    def bare_worker(self) -> Any:
        from tests.bench import bare_celery

        return self.start(
            "bare-worker",
            "celery -A tests.bench.bare_celery worker --queues "
            f"{','.join(bare_celery.QUEUES)} --pool prefork "
            f"--concurrency {self.config.concurrency} "
            "--prefetch-multiplier 1 --hostname bare@%h --without-gossip --without-mingle "
            "--loglevel WARNING",
        )

    def bare(self) -> None:
        import psycopg

        from tests.bench import bare_celery, pipeline

        config, broker = self.config, self.require_broker()
        n, concurrency = config.pipeline_n, config.concurrency
        details = self.report.details
        # 1. Publishing alone (nobody consumes yet): confirmed persistent messages per second.
        for queue in bare_celery.app.conf.task_queues:  # exchange, queue and binding
            queue(broker.channel).declare()
        published = pipeline.publish_noops(n=n, budget=config.publish_budget)
        details["bare_publish"] = published
        self.report.add(
            "pipeline",
            "publish with confirms, 1 publisher (bare)",
            published["published_per_s"],
            "msgs/s",
        )
        # 2. Drain: the worker starts on a full queue.
        self.bare_worker()
        drained = pipeline.drain_queue(
            broker=broker, queue=bare_celery.NOOP_QUEUE, n=published["published"]
        )
        details["bare_noop_drain"] = drained
        self.report.add(
            "pipeline", "bare no-op, drain of a full queue", drained["tasks_per_s"], "tasks/s"
        )
        # 3. End to end: publish while the worker consumes.
        noop = pipeline.bare_noop(
            broker=broker, n=n, budget=config.publish_budget, concurrency=concurrency
        )
        details["bare_noop"] = noop
        self.report.add(
            "pipeline",
            "bare no-op, publish -> done",
            noop["tasks_per_s"],
            "tasks/s",
            note=f"+- {noop['error_bound_s'] * 1000:.0f} ms",
        )
        with psycopg.connect(self.world.database_url, autocommit=True) as conn:
            # 4. Bookkeeping, drain: rows and messages first, then the worker.
            self.stop("bare-worker")
            created = pipeline.bookkeeping_create(conn, n=n, budget=config.publish_budget)
            self.bare_worker()
            wait_until(
                lambda: (
                    broker.exists(bare_celery.BOOKKEEPING_QUEUE)
                    and broker.depth(bare_celery.BOOKKEEPING_QUEUE)[1] > 0
                ),
                timeout=90,
                what="the bare worker",
                interval=0.01,
            )
            began = time.time()
            _, last = pipeline.bookkeeping_wait(conn, n=created["tasks"])
            books_drain = {
                "tasks": created["tasks"],
                "seconds": last - began,
                "tasks_per_s": created["tasks"] / (last - began),
            }
            details["bare_bookkeeping_drain"] = books_drain
            self.report.add(
                "pipeline",
                "bare bookkeeping, drain of a full queue",
                books_drain["tasks_per_s"],
                "tasks/s",
            )
            # 5. Bookkeeping, end to end.
            created = pipeline.bookkeeping_create(conn, n=n, budget=config.publish_budget)
            _, last = pipeline.bookkeeping_wait(conn, n=created["tasks"])
            books = {
                "tasks": created["tasks"],
                "seconds": last - created["started"],
                "publish_seconds": created["publish_seconds"],
                "tasks_per_s": created["tasks"] / (last - created["started"]),
            }
            details["bare_bookkeeping"] = books
            self.report.add(
                "pipeline", "bare bookkeeping, create -> done", books["tasks_per_s"], "tasks/s"
            )
        self.stop("bare-worker")

    def require_broker(self) -> Broker:
        assert self.broker is not None
        return self.broker

    def web(self) -> None:
        from tests.bench import web

        # As the compose deployment runs the api: a listening socket per worker, which the
        # compose file makes safe with net.ipv4.tcp_migrate_req=1 (this host may not have it; no
        # worker stops during the bench). WEB_REUSE_PORT=0 in the environment: the shared socket.
        reuse_port = os.environ.get("WEB_REUSE_PORT") or "1"
        process = self.start(
            "web", PORT=str(self.port), HOST="127.0.0.1", WEB_REUSE_PORT=reuse_port
        )
        self.report.details["web_reuse_port"] = reuse_port == "1"
        self.wait_web(process)
        seconds, connections = self.config.api_seconds, self.config.api_connections
        # A short warm-up so that both gunicorn workers have imported and connected.
        web.wrk(f"{self.base_url}/health", connections=connections, seconds=1)
        web.wrk(
            f"{self.base_url}/api/tasks",
            connections=4,
            seconds=1,
            script="post_task.lua",
            env={"BENCH_TOKEN": self.tokens["api"]},
        )
        # How the keep-alive connections fell on the gunicorn workers decides how many cores serve
        # them (docs/benchmarks.md, A12): recorded with each run.
        with web.ConnectionSplit(self.port, seconds / 2) as health_split:
            health = web.wrk(f"{self.base_url}/health", connections=connections, seconds=seconds)
        with web.ConnectionSplit(self.port, seconds / 2) as create_split:
            create = web.wrk(
                f"{self.base_url}/api/tasks",
                connections=connections,
                seconds=seconds,
                script="post_task.lua",
                env={"BENCH_TOKEN": self.tokens["api"]},
            )
        for result, split in ((health, health_split), (create, create_split)):
            result.pop("raw", None)
            result["connections_per_worker"] = split.split
        self.report.details["api_health"] = health
        self.report.details["api_create"] = create
        section = f"api ({connections} conn)"
        self.report.add(section, "GET /health", health.get("requests_per_s"), "req/s")
        self.report.add(section, "GET /health p50", health.get("p50_ms"), "ms")
        self.report.add(section, "GET /health p99", health.get("p99_ms"), "ms")
        self.report.add(section, "POST /api/tasks", create.get("requests_per_s"), "req/s")
        self.report.add(section, "POST /api/tasks p50", create.get("p50_ms"), "ms")
        self.report.under(section, "POST /api/tasks p99", create.get("p99_ms"), "ms", 50, "< 50 ms")
        for name, split in (("GET /health", health_split), ("POST /api/tasks", create_split)):
            self.report.add(
                section,
                f"{name}: connections on the busiest worker",
                split.busiest_share(),
                "%",
            )
        errors = create.get("non_2xx", 0) + health.get("non_2xx", 0)
        if errors:
            self.report.add(
                section, "non-2xx responses", errors, "responses", target="0", passed=False
            )
        if health.get("requests_per_s") and create.get("requests_per_s"):
            self.report.at_least(
                section,
                "create / health",
                create["requests_per_s"] / health["requests_per_s"],
                "x",
                0.35,
                ">= 0.35",
            )
        if self.config.profile:
            recorder = self.profile("web-create", process.pid)
            web.wrk(
                f"{self.base_url}/api/tasks",
                connections=connections,
                seconds=self.config.profile_seconds,
                script="post_task.lua",
                env={"BENCH_TOKEN": self.tokens["api"]},
            )
            self.summarise_profile("web-create", recorder)

    def bulk(self) -> None:
        from tests.bench import web

        config = self.config
        result = web.bulk(
            self.base_url,
            self.tokens["bulk"],
            requests=config.bulk_requests,
            size=config.bulk_size,
            budget=config.bulk_budget,
        )
        self.report.details["bulk"] = result
        self.report.at_least(
            "bulk",
            f"POST /api/tasks/bulk ({config.bulk_size}/request, {result['requests']} req)",
            result["tasks_per_s"],
            "tasks/s",
            10_000,
            ">= 10,000",
        )
        self.report.add("bulk", "one request p50", result["request_p50_ms"], "ms")
        if config.profile:
            recorder = self.profile("web-bulk", self.processes["web"].pid)
            web.bulk(
                self.base_url,
                self.tokens["bulk"],
                requests=30,
                size=config.bulk_size,
                warmup=0,
                budget=config.profile_seconds,
            )
            self.summarise_profile("web-bulk", recorder)

    def workers(self) -> None:
        from apps.tasks.models import Task
        from tests.bench import pipeline

        backlog_users = [self.users["api"], self.users["bulk"]]
        broker = self.require_broker()
        if not self.config.drain_backlog:
            broker.purge("default")
            Task.objects.filter(owner__in=backlog_users).delete()
        worker = self.start("worker", WORKER_CONCURRENCY=str(self.config.concurrency))
        self.start("beat")
        if self.config.drain_backlog:
            backlog = pipeline.drain_backlog(
                users=backlog_users, broker=broker, budget=self.config.drain_budget
            )
            if backlog["tasks"] < backlog["backlog"]:
                self.stop("worker")  # nothing may claim a task while the rest is removed
                backlog["removed"] = pipeline.remove_unfinished(users=backlog_users, broker=broker)
                worker = self.start("worker", WORKER_CONCURRENCY=str(self.config.concurrency))
            self.report.details["backlog_drain"] = backlog
            self.drain_rate = backlog["tasks_per_s"]
            self.report.add(
                "pipeline",
                "TaskFlow, drain of a full queue",
                backlog["tasks_per_s"],
                "tasks/s",
                note=f"{backlog['tasks']:,} of {backlog['backlog']:,} queued by the API section",
            )
            bare = self.report.details.get("bare_noop_drain", {}).get("tasks_per_s")
            books = self.report.details.get("bare_bookkeeping_drain", {}).get("tasks_per_s")
            rate = backlog["tasks_per_s"]
            self.report.at_least(
                "pipeline",
                "drain: TaskFlow / bare no-op",
                rate / bare if rate and bare else None,
                "x",
                0.7,
                ">= 0.7",
            )
            self.report.at_least(
                "pipeline",
                "drain: TaskFlow / bare bookkeeping",
                rate / books if rate and books else None,
                "x",
                1.5,
                ">= 1.5",
            )
        self.wait_consuming(worker, "default", self.config.concurrency)

    def pipeline(self) -> None:
        from tests.bench import pipeline

        # Creating faster than the worker runs only makes a queue: keep ~5 s of work ahead.
        ahead = max(200, int(5 * self.drain_rate)) if self.drain_rate else 200
        result = pipeline.platform_pipeline(
            user=self.users["pipeline"],
            n=self.config.pipeline_n,
            budget=self.config.pipeline_budget,
            ahead=ahead,
        )
        self.report.details["pipeline"] = result
        rate = self.pipeline_rate = result["tasks_per_s"]
        self.report.add(
            "pipeline", f"TaskFlow, create -> done ({result['tasks']:,} echo)", rate, "tasks/s"
        )
        noop = self.report.details.get("bare_noop", {}).get("tasks_per_s")
        books = self.report.details.get("bare_bookkeeping", {}).get("tasks_per_s")
        self.report.at_least(
            "pipeline",
            "create -> done: TaskFlow / bare no-op",
            rate / noop if noop else None,
            "x",
            0.7,
            ">= 0.7",
        )
        self.report.at_least(
            "pipeline",
            "create -> done: TaskFlow / bare bookkeeping",
            rate / books if books else None,
            "x",
            1.5,
            ">= 1.5",
        )

    def latency(self) -> None:
        from tests.bench import pipeline

        if not self.pipeline_rate:
            raise RuntimeError("no pipeline rate to take half of")
        # Half the pipeline's rate, created the way the pipeline creates (bulk calls): a type
        # that runs in batches gets its tasks up to 16 to a message there too.
        per_call = self.config.latency_per_call
        result = pipeline.latency(
            user=self.users["latency"],
            rate=self.pipeline_rate / 2,
            seconds=self.config.latency_seconds,
            per_call=per_call,
        )
        self.report.details["latency"] = result
        section = f"latency @ {result['target_rate']:.0f}/s ({per_call} a call)"
        self.report.add(section, "achieved create rate", result["achieved_rate"], "tasks/s")
        self.report.under(section, "create -> started p50", result["p50_ms"], "ms", 10, "< 10 ms")
        self.report.under(section, "create -> started p99", result["p99_ms"], "ms", 100, "< 100 ms")
        warmup = result["warmup"]
        self.report.add(
            section,
            f"warm-up ({warmup['seconds']:.0f} s, not counted above) p99",
            warmup["p99_ms"],
            "ms",
        )
        # Single creates (a message each, as POST /api/tasks makes): the per-task path's
        # latency, at a rate it can sustain beside the creating threads on this machine.
        single = pipeline.latency(
            user=self.users["single"],
            rate=min(self.config.single_latency_rate, self.pipeline_rate / 2),
            seconds=self.config.single_latency_seconds,
        )
        self.report.details["latency_single"] = single
        section = f"latency @ {single['target_rate']:.0f}/s (single creates)"
        self.report.add(section, "achieved create rate", single["achieved_rate"], "tasks/s")
        self.report.add(section, "create -> started p50", single["p50_ms"], "ms")
        self.report.add(section, "create -> started p99", single["p99_ms"], "ms")

    def postponed(self) -> None:
        from django.conf import settings

        from tests.bench import pipeline

        spread = self.config.postponed_spread
        n = self.config.postponed_n
        # More than the worker can run in `spread` would measure the worker, not the releaser.
        if self.pipeline_rate:
            n = min(n, max(50, int(0.5 * self.pipeline_rate * spread)))
        result = pipeline.postponed(user=self.users["postponed"], n=n, spread=spread)
        interval = settings.TASKFLOW["RELEASE_INTERVAL_MS"]
        result["release_interval_ms"] = interval
        self.report.details["postponed"] = result
        section = f"postponed ({result['tasks']:,} over {result['spread_s']:.0f} s)"
        self.report.add(section, "lateness p50", result["p50_ms"], "ms")
        self.report.under(
            section,
            "lateness p99",
            result["p99_ms"],
            "ms",
            interval + 250,
            f"< {interval + 250} ms",
        )

    def memory(self) -> None:
        from tests.bench import pipeline

        worker = self.processes["worker"]
        total = self.config.memory_total
        # At least profile_seconds of work for py-spy, even when earlier sections ran most tasks.
        floor = int((self.pipeline_rate or 100) * (self.config.profile_seconds + 2))
        total = max(total, pipeline.succeeded_total() + floor)
        half = total // 2
        began = time.time()
        budget = self.config.memory_budget
        ahead = max(100, int(5 * (self.pipeline_rate or 100)))
        pipeline.run_until_total(
            user=self.users["memory"], total=half, deadline=began + budget / 2, ahead=ahead
        )
        done_half = pipeline.succeeded_total()
        at_half = process_tree_rss(worker.pid)
        recorder = self.profile("worker", worker.pid, idle=True)
        pipeline.run_until_total(
            user=self.users["memory"], total=total, deadline=began + budget, ahead=ahead
        )
        done_end = pipeline.succeeded_total()
        at_end = process_tree_rss(worker.pid)
        self.summarise_profile("worker", recorder)
        self.report.details["memory"] = {
            "target_total": total,
            "tasks_at_first_sample": done_half,
            "tasks_at_second_sample": done_end,
            "rss_first": at_half,
            "rss_second": at_end,
        }
        section = f"memory (worker, {self.config.concurrency} procs)"
        note = "" if done_end >= total else f"time budget: {done_end:,} of {total:,} tasks"
        largest = max(at_end.values()) / MB
        line = self.report.under(
            section, f"largest RSS after {done_end:,} tasks", largest, "MB", 150, "< 150 MB"
        )
        line.note = note
        growth = max(at_end[k] - at_half.get(k, at_end[k]) for k in at_end) / MB
        self.report.under(
            section,
            f"largest RSS growth {done_half:,} -> {done_end:,} tasks",
            growth,
            "MB",
            5,
            "< 5 MB (flat)",
        )
        for name in at_end:
            print(f"    {name}: {at_half.get(name, 0) / MB:.1f} -> {at_end[name] / MB:.1f} MB")

    def scale(self) -> None:
        import httpx
        from django.db.models import Count

        from apps.tasks.models import Task
        from tests.bench import scale, web

        self.stop("beat", "worker")  # nothing else writes while the table grows
        seed_users = [self.users[f"seed{i}"] for i in range(self.config.scale_users)]
        seeded = scale.seed(total_rows=self.config.scale_rows, owner_ids=[u.id for u in seed_users])
        self.report.details["scale_seed"] = seeded
        rows = seeded["rows"]
        section = f"scale ({rows:,} rows)"
        self.report.add(section, "seed (INSERT ... SELECT)", seeded["insert_rows_per_s"], "rows/s")
        reader = seed_users[0]
        own = Task.objects.filter(owner=reader).aggregate(n=Count("id"))["n"]
        cursor = scale.deep_cursor(owner_id=reader.id, depth=own // 2)
        detail_id = (
            Task.objects.filter(owner=self.users["pipeline"]).values_list("id", flat=True).first()
        )
        token = self.tokens[f"seed{0}"]
        paths = {
            "first page": "/api/tasks",
            f"deep cursor page ({own // 2:,} rows in)": f"/api/tasks?cursor={cursor}",
            "filtered list (status=failed&type=fetch_url)": (
                "/api/tasks?status=failed&type=fetch_url"
            ),
            "filtered list (dead_lettered=true)": "/api/tasks?dead_lettered=true",
        }
        pipeline_paths = {"GET /api/tasks/{id} (with history)": f"/api/tasks/{detail_id}"}
        admin_paths = {"admin task list": "/admin/tasks/task/"}
        results: dict[str, Any] = {}
        samples = self.config.read_samples
        with httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            for name, path in paths.items():
                results[name] = web.sample_get(client, path, samples=samples)
            stats = client.get("/api/stats")
            if stats.status_code == 200:
                results["/api/stats"] = web.sample_get(client, "/api/stats", samples=samples)
            else:
                results["/api/stats"] = {"status": stats.status_code, "error": "not available"}
        with httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.tokens['pipeline']}"},
            timeout=30,
        ) as client:
            for name, path in pipeline_paths.items():
                results[name] = web.sample_get(client, path, samples=samples)
        cookie = self._admin_session()
        with httpx.Client(
            base_url=self.base_url, cookies={"sessionid": cookie}, timeout=60
        ) as client:
            for name, path in admin_paths.items():
                results[name] = web.sample_get(client, path, samples=max(10, samples // 4))
        self.report.details["scale_reads"] = results
        for name, result in results.items():
            ceiling, target = (500, "< 500 ms") if name.startswith("admin") else (50, "< 50 ms")
            if result.get("p99_ms") is None:
                self.report.add(
                    section,
                    f"{name} p99",
                    None,
                    "ms",
                    target=target,
                    note=f"{result.get('error', 'failed')} (HTTP {result.get('status')})",
                )
                continue
            self.report.add(section, f"{name} p50", result["p50_ms"], "ms")
            self.report.under(section, f"{name} p99", result["p99_ms"], "ms", ceiling, target)
        counts = scale.count_queries(
            {**paths, "/api/stats": "/api/stats", **admin_paths},
            headers={"HTTP_AUTHORIZATION": f"Bearer {token}"},
            admin=self.users["admin"],
        )
        self.report.details["scale_count_queries"] = counts
        whole = [name for name, found in counts.items() if found["whole_table_count"]]
        self.report.add(
            section,
            "reads with a count(*) over the whole table",
            len(whole),
            "reads",
            target="0",
            passed=not whole,
            note=", ".join(whole),
        )
        for name in whole:
            print(f"    whole-table count in {name}: {counts[name]['count_queries']}")

    def _admin_session(self) -> str:
        from django.conf import settings
        from django.test import Client

        client = Client()
        client.force_login(self.users["admin"])
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        began = time.monotonic()
        with self.phase("setup"):
            self.setup()
        if "setup" in self.report.details.get("errors", {}):
            return 2
        with self.phase("bare celery"):
            self.bare()
        with self.phase("api"):
            self.web()
        with self.phase("bulk"):
            self.bulk()
        with self.phase("workers"):
            self.workers()
        with self.phase("pipeline"):
            self.pipeline()
        with self.phase("latency"):
            self.latency()
        with self.phase("postponed"):
            self.postponed()
        with self.phase("memory"):
            self.memory()
        if self.config.scale_rows:
            with self.phase("scale"):
                self.scale()
        self.report.durations["total"] = round(time.monotonic() - began, 1)
        for name, shares in self.report.details.get("cpu_share", {}).items():
            self.report.add(
                "machine",
                f"CPU of other processes during {name}",
                100 * shares["others"],
                f"% of {self.cpu.cores} cores",
            )
        for name, opened in self.report.details.get("postgres_sessions", {}).items():
            self.report.add("machine", f"PostgreSQL connections opened during {name}", opened, "")
        self.report_host_speed()
        return 0

    def report_host_speed(self) -> None:
        """The speed probe's slowest against its fastest, over the sections' starts and ends: a
        host that slowed down in the run moves absolute numbers and also ratios whose sides ran
        in different minutes (docs/benchmarks.md, "A shared machine")."""
        pairs = self.report.details.get("cpu_speed_ms", {}).values()
        probes = [ms for pair in pairs for ms in pair]
        if not probes:
            return
        fastest, slowest = min(probes), max(probes)
        self.report.add("machine", "CPU speed probe, fastest", fastest, "ms")
        spread = slowest / fastest
        self.report.add("machine", "CPU speed probe, slowest / fastest", spread, "x")
        if spread > HOST_SPEED_SPREAD_WARNING:
            warning = (
                f"the host's CPU speed changed by {spread:.2f} x during the run "
                f"({fastest:.0f}-{slowest:.0f} ms a probe; details.cpu_speed_ms per section): "
                "compare this run's numbers with care"
            )
            self.report.details["warnings"] = [*self.report.details.get("warnings", []), warning]

    def close(self) -> None:
        for name in list(self.processes):
            with suppress(Exception):
                self.stop(name)
        if self.broker is not None:
            with suppress(Exception):
                self.broker.close()
        with suppress(Exception):
            from django.db import connections

            connections.close_all()


def main(argv: list[str] | None = None) -> int:
    mode, config = parse(argv)
    world = BenchWorld()
    print(f"TaskFlow bench ({mode}): database {world.database}, vhost {world.vhost}", flush=True)
    waited = wait_for_quiet(max_wait=config.quiet_wait)
    print(f"Waited {waited:.0f} s for the machine to be quiet.", flush=True)
    world.create()
    world.configure()
    bench = Bench(mode, config, world)
    bench.report.details["waited_for_quiet_s"] = round(waited, 1)
    bench.cpu.start()
    code = 2
    try:
        code = bench.run()
    finally:
        bench.cpu.stop()
        bench.close()
        world.destroy(keep_database=config.keep_database)
        path = bench.report.write()
        print("\n" + bench.report.table())
        missed = bench.report.missed()
        durations = ", ".join(f"{k} {v:.0f}s" for k, v in bench.report.durations.items())
        print(f"\nSections: {durations}")
        if missed:
            print(f"\nMISSED {len(missed)} target(s): " + "; ".join(ln.name for ln in missed))
        for warning in bench.report.details.get("warnings", []):
            print(f"\nWARNING: {warning}")
        if bench.report.details.get("errors"):
            print(f"\nFAILED sections: {', '.join(bench.report.details['errors'])}")
        print(f"\nResults: {path} (and .md); profiles: {bench.profile_dir}")
    return code
