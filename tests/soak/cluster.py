"""The Procfile's processes for the soak, each behind TCP proxies of its own to RabbitMQ,
PostgreSQL and Redis (tests/support/tcpproxy.py), so that a fault can cut one process off or all.
"""

import signal
import threading
from collections.abc import Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import urlparse

from tests.bench.environment import children, process_tree_rss
from tests.support import processes
from tests.support.tcpproxy import TcpProxy

ROLES = ("web", "worker", "worker-io", "beat", "deadletters")
LINKS = ("rabbitmq", "postgresql", "redis")
DEFAULT_PORTS = {"amqp": 5672, "postgres": 5432, "postgresql": 5432, "redis": 6379}
MB = 1024 * 1024


def proxy_for(url: str) -> TcpProxy:
    parsed = urlparse(url)
    return TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORTS[parsed.scheme])


def through(proxy: TcpProxy, url: str) -> str:
    """`url` with its server replaced by the proxy (the URL must name host and port)."""
    routed = proxy.url_for(url)
    if routed == url:
        raise ValueError(f"{url} does not name {proxy.target[0]}:{proxy.target[1]}")
    return routed


class Cluster:
    def __init__(self, urls: dict[str, str], env: dict[str, str]) -> None:
        """`urls`: link -> the real URL; `env`: every process's environment before routing."""
        self.proxies: dict[str, dict[str, TcpProxy]] = {}
        self.envs: dict[str, dict[str, str]] = {}
        variables = {"rabbitmq": "CELERY_BROKER_URL", "postgresql": "DATABASE_URL"}
        variables["redis"] = "REDIS_URL"
        for role in ROLES:
            self.proxies[role] = {link: proxy_for(urls[link]) for link in LINKS}
            routed = {
                variables[link]: through(p, urls[link]) for link, p in self.proxies[role].items()
            }
            self.envs[role] = {**env, **routed}
        self.processes: dict[str, processes.Process] = {}
        self.lock = threading.RLock()  # held while a process is stopped or started
        self.restarts: dict[str, int] = dict.fromkeys(ROLES, 0)
        self.unexpected_exits: list[dict[str, Any]] = []

    # --- processes -------------------------------------------------------------------------------
    def start_all(self) -> None:
        with self.lock:
            for role in ROLES:
                self.processes[role] = processes.Process(
                    role, processes.procfile()[role], self.envs[role]
                )
            for role in ROLES:
                self.processes[role].wait_for_log(processes.READY_LINE[role], timeout=90)

    def start(self, role: str) -> None:
        with self.lock:
            self.processes[role] = processes.start(role, env=self.envs[role])
            self.restarts[role] += 1

    def restart(self, role: str, *, sig: int) -> int | None:
        """Send `sig` (SIGTERM: graceful; SIGKILL: to the whole process group), wait for the end
        (SIGKILL after 30 s), start the process again; the exit code."""
        with self.lock:
            process = self.processes[role]
            if sig == signal.SIGKILL:
                process.kill_group(signal.SIGKILL)
            else:
                process.signal(sig)
            code = process.stop(timeout=30)
            self.start(role)
            return code

    def pool_children(self, role: str) -> list[int]:
        with self.lock:
            return children(self.processes[role].pid)

    def revive(self) -> list[str]:
        """Start again any process that ended without the soak asking (recorded); their names."""
        revived = []
        with self.lock:
            for role, process in self.processes.items():
                if process.returncode is not None:
                    self.unexpected_exits.append(
                        {"process": role, "code": process.returncode, "log": str(process.log_path)}
                    )
                    process.stop(timeout=0)
                    self.start(role)
                    revived.append(role)
        return revived

    def stop_all(self) -> None:
        with self.lock:
            processes.stop_all(dict(self.processes), timeout=30)

    def logs(self) -> dict[str, str]:
        return {role: str(p.log_path) for role, p in self.processes.items()}

    # --- links -----------------------------------------------------------------------------------
    def links(self, link: str, roles: Iterable[str]) -> list[TcpProxy]:
        return [self.proxies[role][link] for role in roles]

    def restore_all(self) -> None:
        for by_link in self.proxies.values():
            for proxy in by_link.values():
                proxy.restore()

    def close(self) -> None:
        for by_link in self.proxies.values():
            for proxy in by_link.values():
                with suppress(Exception):
                    proxy.close()

    # --- memory ----------------------------------------------------------------------------------
    def memory(self) -> dict[str, dict[str, Any]]:
        """RSS (MB) of each process: main process, and pool / gunicorn worker processes."""
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            for role, process in self.processes.items():
                try:
                    tree = process_tree_rss(process.pid)
                except OSError:
                    continue
                main = tree.pop(f"main {process.pid}", 0)
                # A pool process just killed is a zombie (no VmRSS) until the worker reaps it.
                kids = sorted(rss for rss in tree.values() if rss > 0)
                out[role] = {
                    "pid": process.pid,
                    "main_mb": round(main / MB, 1),
                    "children": len(kids),
                    "children_mb": round(sum(kids) / MB, 1),
                    "largest_child_mb": round(max(kids) / MB, 1) if kids else 0.0,
                    "total_mb": round((main + sum(kids)) / MB, 1),
                }
        return out
