"""Reading the deployment files the way their tools do: compose's variable interpolation, the
.env.example assignments, the environment variables that TaskFlow's code reads."""

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ROOT / "deployments"
ENV_EXAMPLE = DEPLOYMENTS / ".env.example"
COMPOSE_FILE = DEPLOYMENTS / "docker-compose.yml"
COMPOSE_BACKENDS_FILE = DEPLOYMENTS / "docker-compose.backends.yml"
DEFINITIONS_FILE = DEPLOYMENTS / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = DEPLOYMENTS / "rabbitmq" / "rabbitmq.conf"
K8S_DIR = DEPLOYMENTS / "k8s"

# Compose service -> Procfile process whose command it runs.
PROCFILE_NAME = {
    "api": "web",
    "worker": "worker",
    "worker-io": "worker-io",
    "beat": "beat",
    "deadletters": "deadletters",
}

# $$ (a literal $), ${NAME}, ${NAME<op>arg} with op one of :- - :? ? :+ +, or $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(Exception):
    pass


def variables_in(text: str) -> set[str]:
    """The variable names a compose file or a Procfile line refers to."""
    return {
        m.group("braced") or m.group("named")
        for m in _VARIABLE.finditer(text)
        if not m.group("escaped")
    }


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation (the compose specification's rules, which are the shell's)."""

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        # Without a colon the operator asks "is it set?"; with one, "is it set and not empty?".
        present = value is not None if op in ("-", "?", "+") else bool(value)
        if op in (":-", "-"):
            return (value or "") if present else arg
        if op in (":?", "?"):
            if not present:
                raise InterpolationError(f"{name}: {arg or 'required'}")
            return value or ""
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def env_example() -> dict[str, str]:
    """NAME=value lines of deployments/.env.example (as compose's --env-file reads them)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # compose drops the quotes around a value
            values[m.group(1)] = value
    return values


def env_example_documented() -> set[str]:
    """Every name .env.example documents: set, or shown commented out (`# NAME=...`)."""
    text = ENV_EXAMPLE.read_text()
    return set(env_example()) | set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def _env_reads(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            func = ast.unparse(node.func)
            reads_env = (
                func == "env" or func.startswith("env.") or func in ("os.environ.get", "os.getenv")
            )
            if reads_env and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) == "os.environ"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            yield node.slice.value


# The client library and CLI run on a user's machine, not in the deployment; their variables
# (TASKFLOW_URL, TASKFLOW_TOKEN, ...) are documented in docs/client.md.
CLIENT_SIDE = {Path("taskflow/client.py"), Path("taskflow/cli.py")}


def variables_read_by_code() -> dict[str, set[str]]:
    """Environment variable -> the files of TaskFlow's processes that read it."""
    paths = [
        *sorted((ROOT / "taskflow").rglob("*.py")),
        *sorted((ROOT / "apps").rglob("*.py")),
        DEPLOYMENTS / "healthcheck.py",
    ]
    reads: dict[str, set[str]] = {}
    for path in paths:
        if "migrations" in path.parts or path.relative_to(ROOT) in CLIENT_SIDE:
            continue
        for name in _env_reads(ast.parse(path.read_text(), filename=str(path))):
            reads.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return reads


def makefile_migrate_commands(*, deployed: bool = False) -> list[str]:
    """The recipe of `make migrate`: what compose's one-shot migrate must run too. `deployed`:
    without `setup_broker --policies`, which sets the queue policies on the local broker with
    rabbitmqctl; a deployed broker loads them from definitions.json (docs/scaling.md)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("migrate:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        command = line.strip().replace("$(BIN)/", "")
        recipe.append(command.replace(" --policies", "") if deployed else command)
    return recipe
