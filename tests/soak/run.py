"""The soak: `make soak` (10 minutes), `make soak SOAK_ARGS="--minutes 2 --rate 3 --seed 7"`.

1. Its own world: database `taskflow_soak` (dropped first if left over, migrated, dropped at the
   end unless --keep-database) and RabbitMQ vhost `taskflow-soak-<random>` (deleted at the end).
2. The Procfile's processes (web, worker, worker-io, beat, deadletters), each reaching RabbitMQ,
   PostgreSQL and Redis through TCP proxies of its own; a local SMTP server (aiosmtpd) and HTTP
   server for send_email, download_files and fetch_url (loopback allowed to the SSRF guard).
3. Load: mixed task types created over HTTP at --rate per second by a few users
   (tests/soak/load.py).
   After a warm-up, memory is sampled and random faults start (tests/soak/faults.py, seeded).
4. At the end: creating stops, every link is restored, and the soak waits for every task to end
   (failed ones dead-lettered). It counts, from the database and from the side effects (marker
   lines, mails received, HTTP hits): lost, duplicated, unexpected failures.

Prints a table, writes bench-results/soak-<timestamp>.json. Exit code 0 when nothing was lost or
duplicated and nothing failed unexpectedly; 1 when something was; 2 when the soak could not run.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

from tests.bench.environment import BenchWorld, rabbitmqctl, wait_until
from tests.bench.report import machine, percentile
from tests.soak.cluster import ROLES, Cluster
from tests.soak.faults import KINDS, Faults
from tests.soak.load import Load

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
VHOST_PREFIX = "taskflow-soak-"


class SoakWorld(BenchWorld):
    """The bench's world (tests/bench/environment.py) with the soak's database and vhost names."""

    def __init__(self) -> None:
        super().__init__(database="taskflow_soak")
        self.vhost = f"{VHOST_PREFIX}{uuid.uuid4().hex[:8]}"
        self.broker_url = self.broker_url.rsplit("/", 1)[0] + f"/{self.vhost}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--rate", type=float, default=4.0, help="tasks created per second")
    parser.add_argument("--seed", type=int, default=None, help="the faults' and mix's RNG seed")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=None, help="s; default min(60, 10%%)")
    parser.add_argument(
        "--fault-gap", type=float, nargs=2, default=(8.0, 25.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--cut", type=float, nargs=2, default=(2.0, 10.0), metavar=("MIN", "MAX"))
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument(
        "--fault-kinds",
        nargs="+",
        choices=list(KINDS),
        default=list(KINDS),
        metavar="KIND",
        help=f"only these faults (default all: {', '.join(repr(k) for k in KINDS)})",
    )
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="s to wait at the end")
    parser.add_argument("--sample-every", type=float, default=30.0, help="s between RSS samples")
    parser.add_argument("--keep-database", action="store_true")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Soak:
    def __init__(self, args: argparse.Namespace, world: SoakWorld, seed: int) -> None:
        self.args = args
        self.world = world
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="taskflow-soak-"))
        self.marker = self.workdir / "runs.txt"
        self.cluster: Cluster | None = None
        self.smtp: Any = None
        self.http: Any = None
        self.load: Load | None = None
        self.faults: Faults | None = None
        self.memory: dict[str, dict[str, Any]] = {}  # "start" / "mid" / "end" -> role -> RSS
        self.timeline: list[dict[str, Any]] = []
        self.base_url = ""

    # --- setting up ------------------------------------------------------------------------------
    def setup(self) -> None:
        from tests.support.http import HttpServer
        from tests.support.processes import free_port
        from tests.support.smtp import SmtpServer

        self.marker.touch()
        self.smtp = SmtpServer().start()
        self.http = HttpServer().start()
        minutes = self.args.minutes
        os.environ.update(
            RELEASE_INTERVAL_MS="500",  # stored in beat's schedule by setup_broker
            # The soak's tokens outlive the default 15 minutes (soak + drain).
            JWT_ACCESS_LIFETIME_SECONDS=str(int(minutes * 60 + self.args.drain_timeout + 3600)),
        )
        import django

        django.setup()
        import io

        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("setup_broker", stdout=io.StringIO())

        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        env = self.world.process_env(
            PORT=str(port),
            HOST="127.0.0.1",
            ACCESS_LOG="0",
            LOG_LEVEL="INFO",
            WEB_CONCURRENCY="2",
            WORKER_CONCURRENCY="2",
            IO_WORKER_MIN="2",
            IO_WORKER_MAX="6",
            TASKFLOW_HANDLER_MODULES="tests.support.handlers",
            CACHE_KEY_PREFIX=f"soak-{uuid.uuid4().hex[:8]}",
            RELEASE_INTERVAL_MS="500",
            RETRY_BACKOFF_BASE_SECONDS="0.2",
            RETRY_BACKOFF_CAP_SECONDS="2",
            MEDIA_ROOT=str(self.workdir / "media"),
            MAIL_HOST=self.smtp.host,
            MAIL_PORT=str(self.smtp.port),
            MAIL_TIMEOUT_SECONDS="5",
            MAIL_FROM="TaskFlow soak <soak@taskflow.test>",
            SSRF_ALLOWED_NETWORKS="127.0.0.0/8",  # the local HTTP server, as the handler tests do
            DOWNLOAD_TIMEOUT_SECONDS="20",
        )
        urls = {
            "rabbitmq": self.world.broker_url,
            "postgresql": self.world.database_url,
            "redis": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        }
        self.cluster = Cluster(urls, env)
        print(f"== starting {', '.join(ROLES)} (logs in tests/artifacts/logs/)", flush=True)
        self.cluster.start_all()
        tokens, images = self._users()
        self.load = Load(
            base_url=self.base_url,
            tokens=tokens,
            images=images,
            rate=self.args.rate,
            rng=random.Random(self.rng.random()),
            marker=self.marker,
            http=self.http,
        )
        self.faults = Faults(
            self.cluster,
            random.Random(self.rng.random()),
            gap=tuple(self.args.fault_gap),
            cut=tuple(self.args.cut),
            kinds=self.args.fault_kinds,
        )

    def _users(self) -> tuple[list[str], dict[str, str]]:
        """A few users with a JWT each, and one small image uploaded over HTTP by each."""
        import httpx
        from rest_framework_simplejwt.tokens import AccessToken

        from apps.accounts.models import User
        from tests.support.images import make_image

        def health() -> bool:
            try:
                return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(health, timeout=60, what="gunicorn to answer /health", interval=0.2)
        tokens, images = [], {}
        for n in range(self.args.users):
            user = User.objects.create_user(f"soak-{n}@example.com")
            token = str(AccessToken.for_user(user))
            upload = httpx.post(
                f"{self.base_url}/api/files",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": (f"soak-{n}.png", make_image("PNG", (64, 48)), "image/png")},
                timeout=30,
            )
            upload.raise_for_status()
            tokens.append(token)
            images[token] = upload.json()["id"]
        return tokens, images

    # --- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        assert self.cluster and self.load and self.faults
        duration = self.args.minutes * 60
        warmup = self.args.warmup if self.args.warmup is not None else min(60.0, duration / 10)
        stop_load, stop_faults = threading.Event(), threading.Event()
        load_thread = threading.Thread(target=self.load.run, args=(stop_load,), daemon=True)
        fault_thread = threading.Thread(target=self.faults.run, args=(stop_faults,), daemon=True)
        print(
            f"== load: {self.args.rate}/s for {self.args.minutes:g} min, seed {self.seed}, "
            f"warm-up {warmup:.0f} s",
            flush=True,
        )
        began = time.monotonic()
        self.faults.began = began
        load_thread.start()
        phase = "warm-up"
        next_sample = began + warmup
        try:
            while (elapsed := time.monotonic() - began) < duration:
                stop_load.wait(1.0)
                for role in self.cluster.revive():
                    print(f"  !! {role} had ended by itself: started again", flush=True)
                if phase == "warm-up" and elapsed >= warmup:
                    self.memory["start"] = self.sample(elapsed)
                    if not self.args.no_faults:
                        fault_thread.start()
                    phase = "faults"
                elif phase == "faults" and elapsed >= duration / 2:
                    self.memory["mid"] = self.sample(elapsed)
                    phase = "second half"
                elif time.monotonic() >= next_sample:
                    self.sample(elapsed)
                if time.monotonic() >= next_sample:
                    next_sample += self.args.sample_every
                    self.progress(elapsed)
        finally:
            stop_load.set()
            stop_faults.set()
            load_thread.join(timeout=60)
            if fault_thread.is_alive():
                fault_thread.join(timeout=120)
            self.load.close()
        self.memory["end"] = self.sample(time.monotonic() - began)

    def sample(self, elapsed: float) -> dict[str, Any]:
        assert self.cluster
        memory = self.cluster.memory()
        self.timeline.append({"at_s": round(elapsed, 1), "rss": memory})
        return memory

    def progress(self, elapsed: float) -> None:
        from apps.tasks.models import Task

        assert self.load
        statuses = Counter(Task.objects.values_list("status", flat=True))
        print(
            f"  [{elapsed:7.1f} s] accepted {len(self.load.created)}; "
            + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            flush=True,
        )

    def drain(self) -> float:
        """Restore every link, revive what is down, wait until every task has settled."""
        from apps.tasks.models import Task
        from apps.tasks.states import FINAL_STATES, TaskStatus

        assert self.cluster
        self.cluster.restore_all()
        self.cluster.revive()
        print(
            f"== drain: waiting (at most {self.args.drain_timeout:.0f} s) for every task",
            flush=True,
        )
        began = time.monotonic()

        cluster = self.cluster

        def settled() -> bool:
            cluster.revive()
            unsettled = Task.objects.exclude(status__in=FINAL_STATES).count()
            undead = Task.objects.filter(
                status=TaskStatus.FAILED, dead_lettered_at__isnull=True
            ).count()
            return unsettled == 0 and undead == 0

        try:
            wait_until(settled, timeout=self.args.drain_timeout, what="every task", interval=1.0)
        except TimeoutError as exc:
            print(f"  !! {exc}", flush=True)
        return time.monotonic() - began

    # --- counting --------------------------------------------------------------------------------
    def count(self, drain_seconds: float) -> dict[str, Any]:
        from apps.files.models import UserFile
        from apps.tasks.models import AttemptOutcome, Task, TaskAttempt, TaskStatusChange
        from apps.tasks.states import FINAL_STATES, TaskStatus

        assert self.load and self.faults and self.cluster
        S = TaskStatus
        created = {c.id: c for c in self.load.created}
        rows: dict[str, dict[str, Any]] = {
            str(t["id"]): dict(t)
            for t in Task.objects.values("id", "type", "status", "dead_lettered_at", "error")
        }
        successes = Counter(
            str(t)
            for t in TaskStatusChange.objects.filter(to_status=S.SUCCEEDED).values_list(
                "task_id", flat=True
            )
        )
        attempts: Counter[str] = Counter()
        lost_attempts: Counter[str] = Counter()
        for attempt_task, outcome in TaskAttempt.objects.values_list("task_id", "outcome"):
            attempts[str(attempt_task)] += 1
            if outcome == AttemptOutcome.LOST:
                lost_attempts[str(attempt_task)] += 1
        outputs = Counter(
            str(t)
            for t in UserFile.objects.filter(source_task__isnull=False).values_list(
                "source_task_id", flat=True
            )
        )

        # Side effects, seen from outside the database.
        marker_lines = [line.split() for line in self.marker.read_text().splitlines() if line]
        runs: Counter[str] = Counter(parts[0] for parts in marker_lines)
        same_attempt_twice = {
            task_id
            for (task_id, _), n in Counter((p[0], p[1]) for p in marker_lines).items()
            if n > 1
        }
        for mail in self.smtp.messages:
            message_id = str(mail.message["Message-ID"] or "")
            if message_id.startswith("<task-"):
                runs[message_id[len("<task-") :].split("@", 1)[0]] += 1
        by_key = {
            c.key: c.id for c in created.values() if c.key.startswith(("download-", "fetch-"))
        }
        for path, hits in self.http.hits.items():
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[1] in by_key:
                runs[by_key[parts[1]]] += hits

        lost, unexpected, not_dead_lettered, missing_effect = [], [], [], []
        duplicated: dict[str, str] = {}
        rerun_after_interruption = []
        outcome_by_type: dict[str, Counter[str]] = defaultdict(Counter)
        for task_id, c in created.items():
            row = rows.get(task_id)
            if row is None or row["status"] not in FINAL_STATES:
                lost.append({"id": task_id, "type": c.type, "status": row and row["status"]})
                continue
            status = row["status"]
            outcome_by_type[c.type][status] += 1
            if status not in c.expect.split("|"):
                unexpected.append(
                    {"id": task_id, "type": c.type, "status": status, "error": row["error"][:300]}
                )
            if status == S.FAILED and row["dead_lettered_at"] is None:
                not_dead_lettered.append(task_id)
            if successes[task_id] > 1:
                duplicated[task_id] = f"{successes[task_id]} successes recorded"
            elif task_id in same_attempt_twice:
                duplicated[task_id] = "one attempt's handler ran twice (marker)"
            elif c.key and runs[task_id] > max(1, attempts[task_id]):
                duplicated[task_id] = (
                    f"side effect ran {runs[task_id]}x in {attempts[task_id]} attempts"
                )
            elif runs[task_id] > 1:
                rerun_after_interruption.append(
                    {
                        "id": task_id,
                        "type": c.type,
                        "runs": runs[task_id],
                        "lost": lost_attempts[task_id],
                    }
                )
            if status == S.SUCCEEDED and (
                (c.key and runs[task_id] == 0)
                or (c.type in ("process_image", "download_files") and outputs[task_id] != 1)
            ):
                missing_effect.append({"id": task_id, "type": c.type, "runs": runs[task_id]})

        unacknowledged = [t for t in rows if t not in created]
        statuses = Counter(rows[t]["status"] for t in created if t in rows)
        failed = [t for t in created if rows.get(t, {}).get("status") == S.FAILED]
        expected_failed = sum(1 for t in failed if "failed" in created[t].expect.split("|"))
        load = self.load
        return {
            "created": len(created),
            "planned": load.planned,
            "post_outcomes": dict(load.outcomes),
            "post_responses": dict(load.responses),
            "create_latency_ms": {
                "p50": _ms(percentile(load.latencies, 50)),
                "p99": _ms(percentile(load.latencies, 99)),
            },
            "created_without_answer": len(unacknowledged),
            "created_without_answer_unsettled": sum(
                1 for t in unacknowledged if rows[t]["status"] not in FINAL_STATES
            ),
            "finished": sum(statuses[s] for s in FINAL_STATES),
            "succeeded": statuses[S.SUCCEEDED],
            "failed": len(failed),
            "failed_expected": expected_failed,
            "failed_unexpected": len(failed) - expected_failed,
            "cancelled": statuses[S.CANCELLED],
            "dead_lettered": sum(1 for t in created if rows.get(t, {}).get("dead_lettered_at")),
            "postponed": sum(1 for c in created.values() if c.postponed),
            "cancelled_over_http": sum(1 for c in created.values() if "cancelled" in c.expect),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unexpected_outcomes": len(unexpected),
            "failed_not_dead_lettered": len(not_dead_lettered),
            "succeeded_without_side_effect": len(missing_effect),
            "rerun_after_interrupted_attempt": len(rerun_after_interruption),
            # Re-runs that no lost attempt explains (the reliability tests allow none of these).
            "rerun_without_lost_attempt": sum(1 for r in rerun_after_interruption if not r["lost"]),
            "attempts": sum(attempts[t] for t in created),
            "lost_attempts": sum(lost_attempts[t] for t in created),
            "mails_received": len(self.smtp.messages),
            "by_type": {k: dict(v) for k, v in sorted(outcome_by_type.items())},
            "faults": dict(self.faults.counts),
            "fault_errors": self.faults.errors,
            "restarts": self.cluster.restarts,
            "unexpected_exits": self.cluster.unexpected_exits,
            "drain_seconds": round(drain_seconds, 1),
            "details": {
                "lost": lost[:50],
                "duplicated": dict(list(duplicated.items())[:50]),
                "unexpected": unexpected[:50],
                "failed_not_dead_lettered": not_dead_lettered[:50],
                "succeeded_without_side_effect": missing_effect[:50],
                "rerun_after_interrupted_attempt": rerun_after_interruption[:50],
                "refused_posts": load.refusals,
                "fault_log": self.faults.log,
            },
        }

    # --- reporting -------------------------------------------------------------------------------
    def report(self, results: dict[str, Any]) -> Path:
        ok = verdict(results)
        other_unexpected = results["unexpected_outcomes"] - results["failed_unexpected"]
        lines = [
            "",
            f"== soak: {self.args.minutes:g} min at {self.args.rate}/s, seed {self.seed}: "
            + ("PASS" if ok else "FAIL"),
            f"  created (201)            {results['created']}  "
            f"(POSTs: {_fmt(results['post_responses'])})",
            f"  finished                 {results['finished']}  "
            f"(succeeded {results['succeeded']}, failed {results['failed']}, "
            f"cancelled {results['cancelled']}; postponed {results['postponed']}, of them "
            f"cancelled over HTTP {results['cancelled_over_http']})",
            f"  failed: expected         {results['failed_expected']}",
            f"  failed: unexpected       {results['failed_unexpected']}",
            f"  dead-lettered            {results['dead_lettered']}",
            f"  lost                     {results['lost']}",
            f"  duplicated               {results['duplicated']}",
            f"  other unexpected ends    {other_unexpected}",
            f"  failed, not dead-lettered {results['failed_not_dead_lettered']}",
            f"  succeeded, no side effect {results['succeeded_without_side_effect']}",
            "  re-run after an interrupted attempt (allowed) "
            f"{results['rerun_after_interrupted_attempt']}, of them with no lost attempt "
            f"{results['rerun_without_lost_attempt']}",
            f"  attempts {results['attempts']}, of them lost {results['lost_attempts']}; "
            f"created without an answer {results['created_without_answer']}; "
            f"drain {results['drain_seconds']} s",
            f"  create latency p50 {results['create_latency_ms']['p50']} ms, "
            f"p99 {results['create_latency_ms']['p99']} ms",
            f"  faults ({sum(results['faults'].values())}): {_fmt(results['faults'])}",
            f"  restarts: {_fmt(results['restarts'])}; ended by themselves: "
            f"{len(results['unexpected_exits'])}",
            "",
            "  RSS (MB): main process + pool/worker processes (count)",
            f"  {'process':<12} {'start':>18} {'mid':>18} {'end':>18}  change (same pids)",
        ]
        for role in ROLES:
            cells = []
            points = [self.memory.get(point, {}).get(role) for point in ("start", "mid", "end")]
            for m in points:
                cells.append(
                    f"{m['main_mb']:.0f} + {m['children_mb']:.0f} ({m['children']})" if m else "-"
                )
            first, last = points[0], points[2]
            if first and last and len({m and m["pid"] for m in points}) == 1:
                change = f"main {last['main_mb'] - first['main_mb']:+.1f} MB"
                if first["children"]:
                    per_child = [m["children_mb"] / max(1, m["children"]) for m in (first, last)]
                    change += f", per pool process {per_child[1] - per_child[0]:+.1f} MB"
            else:
                change = "restarted in between"
            lines.append(f"  {role:<12} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}  {change}")
        if results["details"]["refused_posts"]:
            refused = json.dumps(results["details"]["refused_posts"][:5])
            lines.append(f"  refused POSTs (first 5): {refused[:1500]}")
        if results["fault_errors"]:
            lines.append(f"  faults that could not be injected: {results['fault_errors']}")
        for name in ("lost", "duplicated", "unexpected", "failed_not_dead_lettered"):
            if results["details"][name]:
                lines.append(f"  {name}: {json.dumps(results['details'][name])[:2000]}")
        print("\n".join(lines), flush=True)

        out = ROOT / "bench-results"
        out.mkdir(exist_ok=True)
        path = out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
        body = {
            "pass": ok,
            "seed": self.seed,
            "args": vars(self.args),
            "machine": machine(),
            "results": results,
            "memory": self.memory,
            "memory_timeline": self.timeline,
            "logs": self.cluster.logs() if self.cluster else {},
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        print(f"  written: {path.relative_to(ROOT)}", flush=True)
        return path

    def cleanup(self) -> None:
        if self.cluster is not None:
            self.cluster.restore_all()
            self.cluster.stop_all()
            self.cluster.close()
        for server in (self.smtp, self.http):
            if server is not None:
                server.stop()
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def verdict(results: dict[str, Any]) -> bool:
    problems = (
        "lost",
        "duplicated",
        "unexpected_outcomes",
        "failed_not_dead_lettered",
        "succeeded_without_side_effect",
        "created_without_answer_unsettled",
    )
    return all(results[name] == 0 for name in problems)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _fmt(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def delete_leftover_vhosts() -> None:
    """Vhosts of an earlier soak that could not clean up (kill -9 of the soak itself)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts", "name"], capture_output=True, text=True, timeout=60
    )
    for name in listed.stdout.split():
        if name.startswith(VHOST_PREFIX):
            rabbitmqctl("delete_vhost", name, check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"== soak seed {seed} (repeat with --seed {seed})", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    world = SoakWorld()
    soak = Soak(args, world, seed)
    try:
        delete_leftover_vhosts()
        world.create()
        world.configure()
        soak.setup()
        soak.run()
        drained = soak.drain()
        results = soak.count(drained)
        soak.report(results)
        return 0 if verdict(results) else 1
    except KeyboardInterrupt:
        print("\n== soak interrupted: cleaning up", flush=True)
        return 130
    except Exception:
        traceback.print_exc()
        print("== the soak could not run to its end: cleaning up", flush=True)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup is not interrupted
        soak.cleanup()
        world.destroy(keep_database=args.keep_database)
