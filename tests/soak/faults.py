"""Random faults at random intervals, from a seeded RNG (the same seed, the same sequence).

The web process and worker-io's main process are never restarted, so their memory is measured
over the whole soak; worker-io's pool processes are killed, the other processes are restarted.
"""

import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

from tests.soak.cluster import ROLES, Cluster

# kind: weight
KINDS = {
    "kill -9 pool child": 3,
    "kill -9 worker, restart": 2,
    "SIGTERM + restart": 2,
    "rabbitmq cut": 2,
    "postgresql cut": 2,
    "redis cut": 1,
}
RESTARTED_BY_SIGTERM = ("worker", "beat", "deadletters")
LINK_OF = {"rabbitmq cut": "rabbitmq", "postgresql cut": "postgresql", "redis cut": "redis"}


class Faults:
    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        *,
        gap: tuple[float, float],
        cut: tuple[float, float],
        kinds: list[str],
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.gap = gap
        self.cut = cut
        self.kinds = {kind: KINDS[kind] for kind in kinds}
        self.began = time.monotonic()
        self.log: list[dict[str, Any]] = []
        self.errors: list[str] = []

    @property
    def counts(self) -> Counter[str]:
        return Counter(entry["kind"] for entry in self.log)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.rng.uniform(*self.gap)):
            kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
            started = time.monotonic()
            try:
                entry = self.inject(kind)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.errors.append(f"{kind}: {exc!r}")
                print(f"  !! fault {kind} failed: {exc!r}", flush=True)
                continue
            entry = {"at_s": round(started - self.began, 1), "kind": kind, **entry}
            self.log.append(entry)
            details = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("at_s", "kind"))
            print(f"  [{entry['at_s']:7.1f} s] fault: {kind} ({details})", flush=True)

    def inject(self, kind: str) -> dict[str, Any]:
        rng, cluster = self.rng, self.cluster
        if kind == "kill -9 pool child":
            role = rng.choice(["worker", "worker-io"])
            pool = cluster.pool_children(role)
            if not pool:
                raise RuntimeError(f"{role} has no pool process")
            child = rng.choice(pool)
            os.kill(child, signal.SIGKILL)
            return {"target": role, "pid": child}
        if kind == "kill -9 worker, restart":
            began = time.monotonic()
            cluster.restart("worker", sig=signal.SIGKILL)
            return {"target": "worker", "back_after_s": round(time.monotonic() - began, 1)}
        if kind == "SIGTERM + restart":
            role = rng.choice(RESTARTED_BY_SIGTERM)
            began = time.monotonic()
            code = cluster.restart(role, sig=signal.SIGTERM)
            return {
                "target": role,
                "exit_code": code,
                "back_after_s": round(time.monotonic() - began, 1),
            }
        link = LINK_OF[kind]
        # One process cut off, or all of them at once (a server restart or a partition).
        roles = list(ROLES) if rng.random() < 0.4 else [rng.choice(ROLES)]
        seconds = round(rng.uniform(*self.cut), 1)
        proxies = cluster.links(link, roles)
        for proxy in proxies:
            proxy.cut()
        time.sleep(seconds)  # the outage lasts this long (pacing, not waiting for a condition)
        for proxy in proxies:
            proxy.restore()
        target = "all" if len(roles) > 1 else roles[0]
        return {"target": target, "seconds": seconds}
