"""The `taskflow` command as a user runs it: a real subprocess (the console script pip installed),
with its own config directory, against the running stack (tests/client/conftest.py)."""

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rest_framework_simplejwt.tokens import AccessToken

from taskflow.cli import make_client
from taskflow.client import AuthenticationError, Client
from tests.client.conftest import CLIENT_TESTS, Account, Stack
from tests.support.processes import free_port

pytestmark = CLIENT_TESTS

TASKFLOW = Path(sys.executable).parent / "taskflow"
BAR_LINE = re.compile(r"^\[([#.]{30})\] +(\d+)%  (\w+)(?:  (.*))?$")


@dataclass
class Cli:
    env: dict[str, str]
    config_home: Path
    cwd: Path

    @property
    def credentials(self) -> Path:
        return self.config_home / "taskflow" / "credentials.json"

    def __call__(
        self, *args: str, input: str | None = None, umask: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TASKFLOW), *args],
            env=self.env,
            cwd=self.cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.returncode == 0, f"taskflow {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self.ok("--json", *args, input=input))

    def bytes(self, *args: str) -> bytes:
        result = subprocess.run(
            [str(TASKFLOW), *args], env=self.env, cwd=self.cwd, capture_output=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def cli(stack: Stack, tmp_path: Path) -> Cli:
    # A user's shell: no Django settings, no TASKFLOW_* variables, a home of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TASKFLOW_"))}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "config"))
    return Cli(env=env, config_home=tmp_path / "config", cwd=home)


@pytest.fixture
def logged_in(cli: Cli, stack: Stack, account: Account) -> Cli:
    cli.ok(
        "login",
        "--url",
        stack.url,
        "--email",
        account.email,
        "--password-stdin",
        input=account.password + "\n",
    )
    return cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_keeps_the_token_readable_by_the_user_only(cli: Cli, stack: Stack, account: Account):
    not_yet = cli("status", str(uuid.uuid4()))
    assert not_yet.returncode == 3
    assert "Not logged in: run `taskflow login` first." in not_yet.stderr

    wrong = cli(
        "login", "--url", stack.url, "--email", account.email, "--password-stdin", input="nope\n"
    )
    assert wrong.returncode == 3
    assert "(authentication_failed)" in wrong.stderr
    assert not cli.credentials.exists()

    # Even with a umask that would leave the file readable by anyone.
    login = cli(
        "login",
        "--url",
        stack.url,
        "--email",
        account.email,
        "--password-stdin",
        input=account.password + "\n",
        umask=0,
    )
    assert login.returncode == 0, login.stderr
    assert login.stdout == (
        f"Logged in to {stack.url} as {account.email}. Token saved in {cli.credentials}.\n"
    )
    assert mode(cli.credentials) == 0o600
    assert mode(cli.credentials.parent) == 0o700
    saved = json.loads(cli.credentials.read_text())
    assert set(saved) == {"url", "email", "access", "refresh"}
    assert (saved["url"], saved["email"]) == (stack.url, account.email)
    assert saved["access"] not in login.stdout + login.stderr

    # The saved URL is used from now on; --json before or after the command.
    assert cli.json("whoami")["email"] == account.email
    assert json.loads(cli.ok("whoami", "--json"))["email"] == account.email
    assert cli.ok("whoami").startswith(f"{account.email} (user ")

    assert cli.ok("logout") == "Logged out.\n"
    assert not cli.credentials.exists()
    assert cli("whoami").returncode == 3


def test_submit_status_wait_and_ls(logged_in: Cli, workdir: Path):
    cli = logged_in
    echo = cli.json("submit", "echo", "--payload", '{"hello": "cli"}')
    assert (echo["type"], echo["status"], echo["payload"]) == ("echo", "queued", {"hello": "cli"})

    waited = cli("wait", echo["id"])
    assert waited.returncode == 0, waited.stderr
    assert re.search(r"^status +succeeded$", waited.stdout, re.MULTILINE), waited.stdout
    assert re.search(r'^result +\{"hello": "cli"\}$', waited.stdout, re.MULTILINE)
    status = cli.json("status", echo["id"])
    assert (status["status"], status["result"]) == ("succeeded", {"hello": "cli"})
    assert [a["outcome"] for a in status["attempts"]] == ["succeeded"]
    assert re.search(rf"^id +{echo['id']}$", cli.ok("status", echo["id"]), re.MULTILINE)

    # The payload from a file and from stdin.
    payload_file = workdir / "payload.json"
    payload_file.write_text('{"from": "file"}')
    from_file = cli.json("submit", "echo", "--payload", f"@{payload_file}")
    assert from_file["payload"] == {"from": "file"}
    from_stdin = cli.json("submit", "echo", "--payload", "-", input='{"from": "stdin"}')
    assert from_stdin["payload"] == {"from": "stdin"}

    # Waiting draws the progress bar on stderr (a line per change when stderr is no terminal).
    # submit --wait: from creation to the result in one command; the id comes first.
    waited = cli(
        "submit", "long_computation", "--payload", '{"duration": 3}', "--wait", "--interval", "0.1"
    )
    assert waited.returncode == 0, waited.stderr
    long = cli.json("status", waited.stdout.split("\n")[0])
    bars = [BAR_LINE.match(line) for line in waited.stderr.splitlines()]
    assert bars and all(bars), waited.stderr
    percents = [int(bar.group(2)) for bar in bars if bar]
    assert percents == sorted(percents)
    assert any(0 < p < 100 for p in percents), waited.stderr
    assert waited.stderr.splitlines()[-1] == f"[{'#' * 30}] 100%  succeeded  done"
    assert "Long computation completed successfully" in waited.stdout
    assert cli.json("wait", long["id"], "--no-progress")["status"] == "succeeded"

    at_once = cli("--json", "submit", "echo", "--payload", '{"n": 1}', "--wait", "--no-progress")
    assert at_once.returncode == 0, at_once.stderr
    assert json.loads(at_once.stdout)["result"] == {"n": 1}

    newest_first = [json.loads(at_once.stdout)["id"], long["id"], from_stdin["id"]]
    assert [t["id"] for t in cli.json("ls", "--limit", "3")] == newest_first
    echo_ids = [t["id"] for t in cli.json("ls", "--type", "echo", "--all")]
    assert set(echo_ids) == {
        json.loads(at_once.stdout)["id"],
        from_stdin["id"],
        from_file["id"],
        echo["id"],
    }
    assert [t["id"] for t in cli.json("ls", "--type", "long_computation")] == [long["id"]]
    assert cli.json("ls", "--status", "failed", "--status", "cancelled") == []
    table = cli.ok("ls").splitlines()
    assert table[0].split() == ["ID", "TYPE", "STATUS", "PROGRESS", "CREATED"]
    assert table[2].split()[:4] == [long["id"], "long_computation", "succeeded", "100%"]
    assert len(table) == 1 + 5


def test_cancel_retry_and_exit_codes(logged_in: Cli, stack: Stack):
    cli = logged_in
    long = cli.json("submit", "long_computation", "--payload", '{"duration": 60}')

    timed_out = cli("wait", long["id"], "--timeout", "1", "--no-progress")
    assert timed_out.returncode == 5
    assert "(wait_timeout)" in timed_out.stderr
    as_json = cli("--json", "wait", long["id"], "--timeout", "0.5", "--no-progress")
    assert as_json.returncode == 5
    error = json.loads(as_json.stderr)["error"]
    assert (error["code"], error["task"]["id"]) == ("wait_timeout", long["id"])

    cancelled = cli.ok("cancel", long["id"])
    assert cancelled.startswith(f"{long['id']}  long_computation  ")
    gave_up = cli("wait", long["id"], "--no-progress")
    assert gave_up.returncode == 1
    assert re.search(r"^status +cancelled$", gave_up.stdout, re.MULTILINE), gave_up.stdout

    not_cancellable = cli("cancel", long["id"])
    assert not_cancellable.returncode == 2
    assert "(task_not_cancellable)" in not_cancellable.stderr

    failing = cli.json("submit", "test_permanent", "--max-retries", "0")
    failed = cli("wait", failing["id"], "--no-progress")
    assert failed.returncode == 1
    assert re.search(r"^error +this input can never work$", failed.stdout, re.MULTILINE)
    retried = cli.json("retry", failing["id"])
    assert (retried["status"], retried["retries"]) == ("queued", 0)
    again = cli("--json", "wait", failing["id"], "--no-progress")
    assert again.returncode == 1
    assert json.loads(again.stdout)["attempt_count"] == 2

    # Postponed with a relative --run-at, then cancelled before it runs.
    later = cli.json("submit", "echo", "--run-at", "+1h")
    due = datetime.fromisoformat(later["run_at"].replace("Z", "+00:00"))
    assert later["status"] == "postponed"
    assert abs(due - (datetime.now(tz=UTC) + timedelta(hours=1))) < timedelta(minutes=1)
    assert cli.json("cancel", later["id"])["status"] == "cancelled"

    missing = cli("status", str(uuid.uuid4()))
    assert missing.returncode == 3
    assert missing.stderr == "taskflow: error: No such task. (task_not_found)\n"
    missing_json = cli("--json", "status", str(uuid.uuid4()))
    assert missing_json.returncode == 3
    assert json.loads(missing_json.stderr)["error"] == {
        "code": "task_not_found",
        "message": "No such task.",
        "fields": {},
        "http_status": 404,
    }

    unknown = cli("submit", "no_such_type")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("taskflow: error: Unknown task type 'no_such_type'. ")
    assert "(unknown_task_type)" in unknown.stderr and "echo" in unknown.stderr
    too_long = cli("submit", "long_computation", "--payload", '{"duration": 601}')
    assert too_long.returncode == 2
    assert too_long.stderr == (
        "taskflow: error: Invalid payload for long_computation: payload.duration: Ensure this "
        "value is less than or equal to 600. (validation_error)\n"
    )
    # The fields' problems, but those the message says already.
    retries = cli("submit", "echo", "--max-retries", "11")
    assert retries.returncode == 2
    assert retries.stderr == (
        "taskflow: error: max_retries must be between 0 and 10. (validation_error)\n"
        "  max_retries: Ensure this value is between 0 and 10.\n"
    )

    for bad_payload in ("not json", "[1, 2]"):
        refused = cli("submit", "echo", "--payload", bad_payload)
        assert refused.returncode == 2
        assert refused.stderr.startswith("taskflow: error: --payload ")
    usage = cli("submit")
    assert usage.returncode == 2
    assert "usage: taskflow submit" in usage.stderr

    unreachable = cli("--url", f"http://127.0.0.1:{free_port()}", "whoami")
    assert unreachable.returncode == 4
    assert "(connection_failed)" in unreachable.stderr


def test_files_upload_and_download(logged_in: Cli, workdir: Path):
    cli = logged_in
    content = os.urandom(200_000) + bytes(range(256))
    source = workdir / "photo.raw"
    source.write_bytes(content)

    uploaded = cli.json("files", "upload", str(source), "--name", "renamed.bin")
    assert (uploaded["name"], uploaded["size"]) == ("renamed.bin", len(content))
    plain = cli.ok("files", "upload", str(source))
    assert plain.endswith(f"  photo.raw  {len(content)} bytes\n")

    saved = cli.json("files", "download", uploaded["id"], "-o", str(workdir / "copy.bin"))
    assert saved == {"id": uploaded["id"], "path": str(workdir / "copy.bin"), "size": len(content)}
    assert (workdir / "copy.bin").read_bytes() == content
    into = workdir / "downloads"
    into.mkdir()
    assert cli.ok("files", "download", uploaded["id"], "-o", str(into)) == (
        f"Saved {into / 'renamed.bin'} ({len(content)} bytes)\n"
    )
    assert (into / "renamed.bin").read_bytes() == content
    assert cli.bytes("files", "download", uploaded["id"], "-o", "-") == content

    listed = cli.json("files", "ls")
    assert [f["name"] for f in listed] == ["photo.raw", "renamed.bin"]
    assert uploaded["id"] in cli.ok("files", "ls", "--name", "renamed.bin")

    assert cli.ok("files", "rm", uploaded["id"]) == f"Deleted {uploaded['id']}\n"
    gone = cli("files", "download", uploaded["id"], "-o", str(workdir / "gone.bin"))
    assert gone.returncode == 3
    assert "(file_not_found)" in gone.stderr
    assert not (workdir / "gone.bin").exists()

    missing = cli("files", "upload", str(workdir / "no-such-file"))
    assert missing.returncode == 2
    assert "No such file" in missing.stderr


def test_an_expired_token_is_refreshed_and_the_new_tokens_saved(logged_in: Cli, stack: Stack):
    cli = logged_in
    saved = json.loads(cli.credentials.read_text())
    user_id = cli.json("whoami")["id"]
    expired = AccessToken()
    expired["user_id"] = user_id
    expired.set_exp(from_time=datetime.now(tz=UTC) - timedelta(hours=1))
    cli.credentials.write_text(json.dumps({**saved, "access": str(expired)}))

    assert cli.json("whoami")["id"] == user_id
    renewed = json.loads(cli.credentials.read_text())
    assert renewed["access"] not in (saved["access"], str(expired))
    assert renewed["refresh"] != saved["refresh"]  # rotated, and the new one kept
    assert (renewed["url"], renewed["email"]) == (saved["url"], saved["email"])
    assert mode(cli.credentials) == 0o600
    assert cli.json("whoami")["id"] == user_id
    assert json.loads(cli.credentials.read_text()) == renewed  # no refresh needed this time

    # $TASKFLOW_TOKEN: an access token from the environment, nothing saved needed.
    elsewhere = Cli(
        env={**cli.env, "TASKFLOW_TOKEN": renewed["access"], "TASKFLOW_URL": stack.url,
             "XDG_CONFIG_HOME": str(cli.config_home.parent / "empty")},
        config_home=cli.config_home.parent / "empty",
        cwd=cli.cwd,
    )  # fmt: skip
    assert elsewhere.json("whoami")["id"] == user_id
    assert not elsewhere.credentials.exists()


def test_a_refresh_lost_to_another_taskflow_process_takes_the_tokens_it_saved(
    logged_in: Cli, monkeypatch: pytest.MonkeyPatch
):
    cli = logged_in
    user_id = cli.json("whoami")["id"]
    saved = json.loads(cli.credentials.read_text())
    expired = AccessToken()
    expired["user_id"] = user_id
    expired.set_exp(from_time=datetime.now(tz=UTC) - timedelta(hours=1))
    cli.credentials.write_text(json.dumps({**saved, "access": str(expired)}))

    # This process reads the credentials (an expired access token, refresh token R1) ...
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cli.config_home))
    monkeypatch.delenv("TASKFLOW_TOKEN", raising=False)
    with make_client(argparse.Namespace(url=None)) as slow:
        assert slow.refresh_token == saved["refresh"]
        # ... and another `taskflow` refreshes first: R1 is spent, R2 saved.
        assert cli.json("whoami")["id"] == user_id
        winner = json.loads(cli.credentials.read_text())
        assert winner["refresh"] != saved["refresh"]

        assert slow.me()["id"] == user_id  # R1 refused, so R2 and its access token are used
        assert (slow.access_token, slow.refresh_token) == (winner["access"], winner["refresh"])
    assert json.loads(cli.credentials.read_text()) == winner


def test_password_changes_it_keeps_this_login_and_ends_the_others(
    logged_in: Cli, stack: Stack, account: Account
):
    cli = logged_in
    saved = json.loads(cli.credentials.read_text())
    new_password = "cli-new-horse-4711"
    with Client(stack.url, email=account.email, password=account.password) as other_device:
        wrong = cli("password", "--password-stdin", input=f"not-it\n{new_password}\n")
        assert wrong.returncode == 2, wrong.stderr
        assert "(wrong_password)" in wrong.stderr
        assert json.loads(cli.credentials.read_text()) == saved
        assert other_device.me()["email"] == account.email

        changed = cli("password", "--password-stdin", input=f"{account.password}\n{new_password}\n")
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == (
            "Password changed. Every other session has ended; the new token is saved in "
            f"{cli.credentials}.\n"
        )
        renewed = json.loads(cli.credentials.read_text())
        assert renewed["access"] != saved["access"] and renewed["refresh"] != saved["refresh"]
        assert (renewed["url"], renewed["email"]) == (saved["url"], saved["email"])
        assert mode(cli.credentials) == 0o600
        assert cli.json("whoami")["email"] == account.email
        assert json.loads(cli.credentials.read_text()) == renewed  # no refresh was needed
        with pytest.raises(AuthenticationError) as ended:
            other_device.me()
        assert ended.value.code == "token_not_valid"
    with Client(stack.url, email=account.email, password=new_password) as again:
        assert again.me()["email"] == account.email


def test_logout_all_ends_every_session_and_forgets_the_token(
    logged_in: Cli, stack: Stack, account: Account
):
    cli = logged_in
    saved = json.loads(cli.credentials.read_text())
    with Client(stack.url, email=account.email, password=account.password) as other_device:
        assert cli.ok("logout", "--all") == (
            "Logged out everywhere: every session of the account has ended.\n"
        )
        assert not cli.credentials.exists()
        with pytest.raises(AuthenticationError):
            other_device.me()
    stale = Client(stack.url, saved["access"], refresh_token=saved["refresh"])
    with stale, pytest.raises(AuthenticationError):
        stale.me()
    assert cli("whoami").returncode == 3
