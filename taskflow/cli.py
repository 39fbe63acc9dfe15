"""The `taskflow` command: the API client (taskflow.client) from a shell. docs/client.md.

Exit codes: 0 ok; 1 the task failed or was cancelled (wait, submit --wait); 2 usage or
validation error (a 400 or 409 included); 3 not found, or not logged in / not allowed; 4 no answer
from the server (connection error, 5xx, 429); 5 `wait` timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Any, NoReturn

from taskflow.client import (
    AuthenticationError,
    Client,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServerError,
    TaskFlowError,
    Timeout,
)

DEFAULT_URL = "http://localhost:8000"
CREDENTIALS_FILE = "credentials.json"

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND_OR_AUTH = 3
EXIT_CONNECTION = 4
EXIT_TIMEOUT = 5


class UsageError(Exception):
    """Bad input caught before any request: exit code 2."""


# --- Configuration -----------------------------------------------------------------------------


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/taskflow, or ~/.config/taskflow (a relative XDG_CONFIG_HOME is ignored,
    as the XDG spec says)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "taskflow"


def credentials_path() -> Path:
    return config_dir() / CREDENTIALS_FILE


def load_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read {credentials_path()}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_credentials(data: dict[str, Any]) -> Path:
    """Write the credentials readable by their owner only: the directory 0700, the file 0600 from
    the moment it exists (written under another name, then renamed over the old one)."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # were it left over with another mode
        with os.fdopen(descriptor, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def base_url(args: argparse.Namespace, saved: dict[str, Any]) -> str:
    """--url, else $TASKFLOW_URL, else the URL logged in to, else http://localhost:8000."""
    url = args.url or os.environ.get("TASKFLOW_URL") or saved.get("url") or DEFAULT_URL
    return str(url).rstrip("/")


class SavedTokensClient(Client):
    """A client on the saved credentials. Refresh tokens work once: when another `taskflow`
    process refreshed the same token first, this one's refresh is refused, and the tokens that
    process saved are taken instead."""

    def refresh(self) -> str:
        try:
            return super().refresh()
        except AuthenticationError:
            latest = load_credentials()
            if latest.get("access") and latest.get("refresh") not in (None, self.refresh_token):
                self.access_token, self.refresh_token = latest["access"], latest["refresh"]
                return str(self.access_token)
            raise


def make_client(args: argparse.Namespace, *, authenticated: bool = True) -> Client:
    """A client for the command: with $TASKFLOW_TOKEN (an access token) if set, else with the
    saved tokens, kept up to date in the credentials file when they are refreshed."""
    saved = load_credentials()
    url = base_url(args, saved)
    if not authenticated:
        return Client(url)
    env_token = os.environ.get("TASKFLOW_TOKEN")
    if env_token:
        return Client(url, env_token)
    if not saved.get("access") and not saved.get("refresh"):
        raise AuthenticationError(
            "Not logged in: run `taskflow login` first.", code="not_authenticated"
        )

    def keep(access: str, refresh: str | None) -> None:
        save_credentials({**saved, "access": access, "refresh": refresh})

    return SavedTokensClient(
        url, saved.get("access"), refresh_token=saved.get("refresh"), on_tokens=keep
    )


# --- Output ------------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def task_line(task: dict[str, Any]) -> str:
    return f"{task['id']}  {task['type']}  {task['status']}"


def show_task(task: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", task.get("id")),
        ("type", task.get("type")),
        ("status", task.get("status")),
    ]
    progress = task.get("progress")
    if progress is not None:
        message = task.get("progress_message") or ""
        rows.append(("progress", f"{progress}%" + (f"  {message}" if message else "")))
    if task.get("cancel_requested") and task.get("status") == "running":
        rows.append(("cancel", "requested; the task stops at its next check"))
    rows += [
        ("queue", task.get("queue")),
        ("attempts", task.get("attempt_count")),
        (
            "retries",
            f"{task['retries']} of {task['max_retries']}" if "max_retries" in task else None,
        ),
        ("run_at", task.get("run_at")),
        ("created", task.get("created_at")),
        ("started", task.get("started_at")),
        ("finished", task.get("finished_at")),
        ("error", task.get("error")),
        ("dead-lettered", task.get("dead_lettered_at")),
    ]
    if "payload" in task:
        rows.append(("payload", compact(task["payload"])))
    if task.get("result") is not None:
        rows.append(("result", compact(task["result"])))
    for label, value in rows:
        if value not in (None, ""):
            print(f"{label:<14}{value}")


def show_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = [list(headers), *([("" if v is None else str(v)) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


class ProgressBar:
    """A text progress bar on stderr: redrawn in place on a terminal, one line per change
    elsewhere (a log file, a pipe)."""

    def __init__(self, stream: IO[str], width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.drawn = False

    def update(self, task: dict[str, Any]) -> None:
        percent = max(0, min(100, int(task.get("progress") or 0)))
        filled = round(self.width * percent / 100)
        bar = "#" * filled + "." * (self.width - filled)
        message = task.get("progress_message") or ""
        line = f"[{bar}] {percent:3d}%  {task.get('status', '')}" + (
            f"  {message}" if message else ""
        )
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


# --- Input -------------------------------------------------------------------------------------

RELATIVE_TIME = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_payload(raw: str | None) -> dict[str, Any]:
    """--payload: JSON text, @file with JSON in it, or - for standard input."""
    if raw is None:
        return {}
    if raw == "-":
        text = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"--payload {raw}: {exc.strerror or exc}") from exc
    else:
        text = raw
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object, e.g. '{\"duration\": 5}'.")
    return payload


def parse_run_at(raw: str | None) -> str | None:
    """--run-at: an RFC 3339 time (sent as given), or +N[s|m|h|d] from now."""
    if raw is None:
        return None
    relative = RELATIVE_TIME.match(raw.strip())
    if relative:
        seconds = float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
        when = datetime.now(tz=UTC) + timedelta(seconds=seconds)
        return when.isoformat().replace("+00:00", "Z")
    return raw


# --- Commands ----------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    saved = load_credentials()
    url = base_url(args, saved)
    email = args.email or os.environ.get("TASKFLOW_EMAIL") or input("Email: ").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = os.environ.get("TASKFLOW_PASSWORD") or getpass.getpass("Password: ")
    if not email or not password:
        raise UsageError("An email and a password are needed to log in.")
    with Client(url) as client:
        tokens = client.login(email, password)
    path = save_credentials(
        {"url": url, "email": email, "access": tokens["access"], "refresh": tokens.get("refresh")}
    )
    if args.json:
        emit_json({"url": url, "email": email, "credentials": str(path)})
    else:
        print(f"Logged in to {url} as {email}. Token saved in {path}.")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    if args.all:
        return _logout_everywhere(args)
    saved = load_credentials()
    path = credentials_path()
    if saved.get("refresh"):
        # The token is forgotten here either way; the server may know it no more already.
        with (
            Client(base_url(args, saved), refresh_token=saved["refresh"]) as client,
            contextlib.suppress(AuthenticationError, NotFound),
        ):
            client.logout()
    existed = path.exists()
    path.unlink(missing_ok=True)
    if args.json:
        emit_json({"logged_out": existed})
    else:
        print("Logged out." if existed else "Not logged in.")
    return EXIT_OK


def _logout_everywhere(args: argparse.Namespace) -> int:
    """End every session of the account on the server, then forget the saved token (dead now)."""
    with make_client(args) as client:
        client.logout_all()
    if not os.environ.get("TASKFLOW_TOKEN"):  # else the saved token may be another account's
        credentials_path().unlink(missing_ok=True)
    if args.json:
        emit_json({"logged_out": True, "everywhere": True})
    else:
        print("Logged out everywhere: every session of the account has ended.")
    return EXIT_OK


def cmd_password(args: argparse.Namespace) -> int:
    if args.password_stdin:  # two lines: the current password, then the new one
        current = sys.stdin.readline().rstrip("\r\n")
        new = sys.stdin.readline().rstrip("\r\n")
    else:
        current = getpass.getpass("Current password: ")
        new = getpass.getpass("New password: ")
        if getpass.getpass("New password again: ") != new:
            raise UsageError("The new passwords do not match.")
    if not current or not new:
        raise UsageError("The current and the new password are needed.")
    from_environment = bool(os.environ.get("TASKFLOW_TOKEN"))
    with make_client(args) as client:
        client.change_password(current, new)  # the saved client saves the new tokens
    path = None if from_environment else credentials_path()
    if args.json:
        emit_json({"changed": True, "credentials": str(path) if path else None})
    elif path is None:
        print("Password changed. Every session has ended, $TASKFLOW_TOKEN's too: log in again.")
    else:
        print(f"Password changed. Every other session has ended; the new token is saved in {path}.")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        user = client.me()
        if args.json:
            emit_json(user)
        else:
            print(f"{user['email']} (user {user['id']}) at {client.base_url}")
    return EXIT_OK


def cmd_types(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        types = client.task_types()
    if args.json:
        emit_json(types)
    else:
        show_table(
            ["TYPE", "QUEUE", "DESCRIPTION"],
            ([t["name"], t["queue"], t["description"]] for t in types),
        )
    return EXIT_OK


def _wait_and_report(
    client: Client, task_id: str, args: argparse.Namespace, on_task: Callable[[Any], None]
) -> int:
    bar = ProgressBar(sys.stderr) if not args.no_progress else None
    try:
        task = client.wait(
            task_id,
            timeout=args.timeout,
            poll_interval=args.interval,
            max_interval=max(args.interval, 2.0),
            on_progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    on_task(task)
    return EXIT_OK if task["status"] == "succeeded" else EXIT_TASK_FAILED


def _print_final(args: argparse.Namespace) -> Callable[[dict[str, Any]], None]:
    def report(task: dict[str, Any]) -> None:
        if args.json:
            emit_json(task)
        else:
            show_task(task)

    return report


def cmd_submit(args: argparse.Namespace) -> int:
    payload = parse_payload(args.payload)
    run_at = parse_run_at(args.run_at)
    with make_client(args) as client:
        task = client.submit(
            args.type,
            payload,
            run_at=run_at,
            max_retries=args.max_retries,
            idempotency_key=args.idempotency_key,
        )
        if args.wait:
            if not args.json:
                print(task["id"], flush=True)
            return _wait_and_report(client, task["id"], args, _print_final(args))
    if args.json:
        emit_json(task)
    else:
        print(task_line(task))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        task = client.get(args.id)
    _print_final(args)(task)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        return _wait_and_report(client, args.id, args, _print_final(args))


def cmd_ls(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        tasks = client.list(
            status=args.status,
            type=args.type,
            created_after=args.created_after,
            created_before=args.created_before,
            dead_lettered=args.dead_lettered,
            page_size=min(200, args.limit) if args.limit else 200,
        )
        shown = list(tasks if not args.limit else islice(tasks, args.limit))
    if args.json:
        emit_json(shown)
    else:
        show_table(
            ["ID", "TYPE", "STATUS", "PROGRESS", "CREATED"],
            (
                [t["id"], t["type"], t["status"], f"{t['progress']}%", t["created_at"]]
                for t in shown
            ),
        )
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        task = client.cancel(args.id)
    if args.json:
        emit_json(task)
    elif task["status"] == "running":
        print(f"{task_line(task)}  (cancel requested: it stops at its next check)")
    else:
        print(task_line(task))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        task = client.retry(args.id)
    if args.json:
        emit_json(task)
    else:
        print(task_line(task))
    return EXIT_OK


def _file_row(info: dict[str, Any]) -> list[Any]:
    return [info["id"], info["name"], info["size"], info["content_type"], info["created_at"]]


def cmd_files_upload(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"No such file: {path}")
    with make_client(args) as client:
        info = client.upload(path, args.name)
    if args.json:
        emit_json(info)
    else:
        print(f"{info['id']}  {info['name']}  {info['size']} bytes")
    return EXIT_OK


def cmd_files_download(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        if args.output == "-":
            client.download_to(args.id, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return EXIT_OK
        path = client.download(args.id, args.output or ".")
    size = path.stat().st_size
    if args.json:
        emit_json({"id": args.id, "path": str(path), "size": size})
    else:
        print(f"Saved {path} ({size} bytes)")
    return EXIT_OK


def cmd_files_ls(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        files = client.list_files(name=args.name, page_size=200)
        shown = list(files if not args.limit else islice(files, args.limit))
    if args.json:
        emit_json(shown)
    else:
        show_table(["ID", "NAME", "SIZE", "TYPE", "CREATED"], (_file_row(f) for f in shown))
    return EXIT_OK


def cmd_files_rm(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        client.delete_file(args.id)
    if args.json:
        emit_json({"deleted": args.id})
    else:
        print(f"Deleted {args.id}")
    return EXIT_OK


# --- Parser ------------------------------------------------------------------------------------


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {raw!r}")
    return value


def non_negative_int(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {raw!r}")
    return int(raw)


def build_parser() -> argparse.ArgumentParser:
    # --url and --json work before and after the command (`taskflow --json ls`, `taskflow ls
    # --json`); SUPPRESS keeps a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the API's base URL (default: $TASKFLOW_URL, the URL logged in to, {DEFAULT_URL})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable JSON on stdout (errors as JSON on stderr)",
    )

    parser = argparse.ArgumentParser(
        prog="taskflow",
        parents=[common],
        description="Run and follow TaskFlow tasks from the shell.",
        epilog="Exit codes: 0 ok, 1 task failed or cancelled, 2 usage or validation error, "
        "3 not found or not logged in, 4 connection or server error, 5 wait timed out.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def wait_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--timeout", type=positive_float, help="give up after this many seconds (exit 5)"
        )
        sub.add_argument(
            "--interval",
            type=positive_float,
            default=0.5,
            help="seconds between polls while the task moves (default 0.5)",
        )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    login = command("login", cmd_login, "log in and save the token")
    login.add_argument("--email", help="default: $TASKFLOW_EMAIL, else asked")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: $TASKFLOW_PASSWORD, else asked)",
    )
    logout = command("logout", cmd_logout, "revoke the saved token and forget it")
    logout.add_argument(
        "--all",
        action="store_true",
        help="end every session of the account, on every device (a stolen token too)",
    )
    password = command("password", cmd_password, "change your password: every other session ends")
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the current password, then the new one, a line each from stdin (default: asked)",
    )
    command("whoami", cmd_whoami, "the logged-in user")
    command("types", cmd_types, "the task types")

    submit = command("submit", cmd_submit, "create a task")
    submit.add_argument("type", help="task type, e.g. echo or long_computation")
    submit.add_argument("--payload", help="JSON object, @file.json, or - for stdin (default {})")
    submit.add_argument("--run-at", help="RFC 3339 time, or +30s / +10m / +2h / +1d from now")
    submit.add_argument("--max-retries", type=non_negative_int, help="0..10")
    submit.add_argument("--idempotency-key", help="a repeat with the same key creates nothing")
    submit.add_argument("--wait", action="store_true", help="then wait for it, as `wait` does")
    wait_options(submit)

    status = command("status", cmd_status, "a task, with its attempts")
    status.add_argument("id")

    wait = command("wait", cmd_wait, "wait for a task to finish, with a progress bar")
    wait.add_argument("id")
    wait_options(wait)

    ls = command("ls", cmd_ls, "list your tasks, newest first")
    ls.add_argument("--status", action="append", help="only this status (repeat for several)")
    ls.add_argument("--type", help="only this task type")
    ls.add_argument("--created-after", help="created at or after this RFC 3339 time")
    ls.add_argument("--created-before", help="created before this RFC 3339 time")
    dead = ls.add_mutually_exclusive_group()
    dead.add_argument(
        "--dead-lettered", action="store_true", default=None, help="only dead-lettered tasks"
    )
    dead.add_argument(
        "--not-dead-lettered",
        dest="dead_lettered",
        action="store_false",
        help="only tasks that were not dead-lettered",
    )
    ls.add_argument(
        "--limit", type=non_negative_int, default=20, help="at most this many (default 20)"
    )
    ls.add_argument("--all", dest="limit", action="store_const", const=0, help="no limit")

    for name, handler, help in (
        ("cancel", cmd_cancel, "cancel a task (a running one stops at its next check)"),
        ("retry", cmd_retry, "run a failed or cancelled task again"),
    ):
        command(name, handler, help).add_argument("id")

    files = commands.add_parser("files", parents=[common], help="your files").add_subparsers(
        dest="files_command", metavar="COMMAND", required=True
    )

    def file_command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = files.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    upload = file_command("upload", cmd_files_upload, "upload a file")
    upload.add_argument("path")
    upload.add_argument("--name", help="the name it gets (default: the file's)")
    download = file_command("download", cmd_files_download, "download a file")
    download.add_argument("id")
    download.add_argument(
        "-o", "--output", help="file or directory to write (default: here); - for stdout"
    )
    files_ls = file_command("ls", cmd_files_ls, "list your files, newest first")
    files_ls.add_argument("--name", help="only files with this exact name")
    files_ls.add_argument("--limit", type=non_negative_int, default=50, help="default 50")
    files_ls.add_argument("--all", dest="limit", action="store_const", const=0, help="no limit")
    file_command("rm", cmd_files_rm, "delete a file").add_argument("id")
    return parser


# --- Errors and exit codes ---------------------------------------------------------------------


def exit_code_for(error: TaskFlowError) -> int:
    if isinstance(error, Timeout):
        return EXIT_TIMEOUT
    if isinstance(error, NotFound | AuthenticationError):
        return EXIT_NOT_FOUND_OR_AUTH
    if isinstance(error, ConnectionFailed | ServerError | RateLimited):
        return EXIT_CONNECTION
    return EXIT_USAGE  # ValidationError, Conflict, and any other refusal of the request


def report_error(error: TaskFlowError, *, as_json: bool) -> None:
    if as_json:
        body: dict[str, Any] = {
            **error.body,
            "code": error.code,
            "message": error.message,
            "fields": error.fields,
            "http_status": error.status,
        }
        if isinstance(error, Timeout):
            body["task"] = error.task
        json.dump({"error": body}, sys.stderr)
        sys.stderr.write("\n")
        return
    print(f"taskflow: error: {error.message} ({error.code})", file=sys.stderr)
    for field, problems in error.fields.items():
        text = "; ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
        if text not in error.message:  # the message names the first problem already
            print(f"  {field}: {text}", file=sys.stderr)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        print(f"  try again in {error.retry_after:g}s", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.url = getattr(args, "url", None)
    args.json = getattr(args, "json", False)
    try:
        code = args.handler(args)
    except TaskFlowError as error:
        report_error(error, as_json=args.json)
        code = exit_code_for(error)
    except UsageError as error:
        if args.json:
            json.dump(
                {"error": {"code": "usage_error", "message": str(error), "fields": {}}}, sys.stderr
            )
            sys.stderr.write("\n")
        else:
            print(f"taskflow: error: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
