"""deployments/Dockerfile, read as text (no Docker engine here to build it): multi-stage, only the
runtime dependencies in the final stage, an unprivileged user, a health check, and a build context
that holds what the image copies."""

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tests.deployments.support import DEPLOYMENTS, ROOT
from tests.support.processes import procfile

DOCKERFILE = DEPLOYMENTS / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_it_is_multi_stage_from_a_slim_python_of_the_projects_version():
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert [f.split()[-1] for f in froms] == ["build", "runtime"]
    base = next(rest for keyword, rest in instructions() if keyword == "ARG")
    assert base == "PYTHON_IMAGE=python:3.11-slim-bookworm"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires


def test_the_final_stage_gets_only_the_runtime_dependencies():
    build, runtime = stages()
    build_runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "['project']['dependencies']" in build_runs  # not the dev extra
    assert "[dev]" not in DOCKERFILE.read_text()
    runtime_runs = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert "pip install" not in runtime_runs and "apt-get" not in runtime_runs
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies


def test_it_runs_as_an_unprivileged_user_with_a_health_check():
    _, runtime = stages()
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users == ["10001:10001"]
    healthcheck = next(rest for keyword, rest in runtime if keyword == "HEALTHCHECK")
    assert 'CMD ["python", "deployments/healthcheck.py", "api"]' in healthcheck
    cmd = next(rest for keyword, rest in runtime if keyword == "CMD")
    assert " ".join(shlex.split(cmd.strip("[]").replace(",", " "))) == procfile()["web"]


def copied_sources() -> list[str]:
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def ignored(path: str, patterns: list[str]) -> bool:
    """The .dockerignore rule: the last pattern that matches decides (a ! pattern re-includes)."""
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes) or fnmatch.fnmatch(
            path, pattern
        ):
            result = not negated
    return result


def test_everything_the_image_copies_is_in_the_build_context():
    patterns = [
        line.strip()
        for line in (DEPLOYMENTS / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied_sources():
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/"), patterns), f"{source} is excluded from the context"
    # Secrets and local state never reach the image.
    for path in (".env", "deployments/.env", ".venv/bin/python", "tests/conftest.py"):
        assert ignored(path, patterns), path


@pytest.mark.parametrize("path", ["manage.py", "taskflow/settings.py", "apps/tasks/queues.py"])
def test_the_code_the_processes_need_is_copied(path):
    assert any(path == s or path.startswith(s) for s in copied_sources())
