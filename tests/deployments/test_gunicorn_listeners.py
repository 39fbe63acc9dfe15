"""gunicorn as the Procfile runs it: one listening socket shared by the workers (WEB_REUSE_PORT=0),
or one per worker (1), so that the kernel spreads keep-alive connections over the workers instead
of the first to wake taking them; unset, one per worker exactly where the kernel moves a stopping
worker's queued connections to the others (net.ipv4.tcp_migrate_req=1; docs/scaling.md)."""

import builtins
import http.client
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deployments.support import ROOT
from tests.support import processes
from tests.support.wait import wait_for

GUNICORN_CONF = ROOT / "taskflow" / "gunicorn.conf.py"
MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"

WORKERS = 2
CONNECTIONS = 16


def _sockets(port: int, state: str) -> list[int]:
    """The pid owning each TCP socket on `port` in `state` (iproute2's ss)."""
    filter_ = ["state", state, f"( sport = :{port} )"]
    out = subprocess.run(
        ["ss", "-tnpH", *filter_], capture_output=True, text=True, check=True
    ).stdout
    pids = []
    for line in out.splitlines():
        _, _, users = line.partition("users:")
        pids.append(int(users.split("pid=")[1].split(",")[0]))
    return pids


def _health(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _start(port: int, reuse_port: str) -> processes.Process:
    env = processes.test_environment(
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY=str(WORKERS),
        WEB_THREADS="2",
        WEB_REUSE_PORT=reuse_port,
    )
    return processes.start("web", env=env)


def test_with_reuse_port_off_the_workers_share_one_listening_socket():
    port = processes.free_port()
    web = _start(port, "0")
    try:
        wait_for(lambda: _health(port) == 200, timeout=60, what="gunicorn to answer /health")
        listening = subprocess.run(
            ["ss", "-tlnpH", f"( sport = :{port} )"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert len(listening) == 1  # the arbiter's socket, inherited by every worker
        assert f"pid={web.pid}," in listening[0]
    finally:
        web.stop()


def test_with_reuse_port_each_worker_listens_and_keep_alive_connections_reach_both():
    port = processes.free_port()
    web = _start(port, "1")
    opened: list[http.client.HTTPConnection] = []
    try:
        wait_for(lambda: _health(port) == 200, timeout=60, what="gunicorn to answer /health")
        wait_for(
            lambda: len(set(_sockets(port, "listening"))) == WORKERS,
            timeout=60,
            what="both workers listening",
        )
        listeners = _sockets(port, "listening")
        assert len(listeners) == WORKERS  # one socket each, none shared with the arbiter
        assert web.pid not in listeners

        for _ in range(CONNECTIONS):  # keep-alive: each stays open after its answer
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            opened.append(connection)
        holders = _sockets(port, "established")
        # All 16 on one of two sockets by chance: 2 in 65,536.
        assert len(holders) == CONNECTIONS
        assert set(holders) == set(listeners)
    finally:
        for connection in opened:
            connection.close()
        web.stop()


def _settings(monkeypatch: Any, tmp_path: Path, *, reuse_port: str, kernel: str | None) -> Any:
    """taskflow/gunicorn.conf.py's settings, read as gunicorn reads them, with this environment's
    WEB_REUSE_PORT and the kernel's tcp_migrate_req as given (None: the kernel has no such
    setting, as before Linux 5.14)."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))  # the file empties this one
    monkeypatch.setenv("WEB_REUSE_PORT", reuse_port)
    sysctl = tmp_path / "tcp_migrate_req"
    if kernel is not None:
        sysctl.write_text(f"{kernel}\n")
    real_open = builtins.open

    def open_with_this_kernel(file: Any, *args: Any, **kwargs: Any) -> Any:
        return real_open(sysctl if file == MIGRATE_SYSCTL else file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_with_this_kernel)
    try:
        return runpy.run_path(str(GUNICORN_CONF))
    finally:
        monkeypatch.setattr(builtins, "open", real_open)


@pytest.mark.parametrize(("kernel", "expected"), [("1", True), ("0", False), (None, False)])
def test_unset_reuse_port_is_on_where_the_kernel_moves_queued_connections(
    monkeypatch, tmp_path, kernel, expected
):
    settings = _settings(monkeypatch, tmp_path, reuse_port="", kernel=kernel)
    assert settings["reuse_port"] is expected


@pytest.mark.parametrize(("setting", "kernel"), [("0", "1"), ("1", "0"), ("1", None)])
def test_an_explicit_web_reuse_port_wins_over_the_kernel(monkeypatch, tmp_path, setting, kernel):
    settings = _settings(monkeypatch, tmp_path, reuse_port=setting, kernel=kernel)
    assert settings["reuse_port"] is (setting == "1")
