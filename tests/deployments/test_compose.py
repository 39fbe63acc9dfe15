"""deployments/docker-compose.yml, checked without a Docker engine: against the Compose
specification's JSON schema, against the Procfile and the Makefile, and against .env.example."""

import json
import re
import shlex
from importlib.resources import files
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import pytest

from tests.deployments.support import (
    COMPOSE_BACKENDS_FILE,
    COMPOSE_FILE,
    DEPLOYMENTS,
    ENV_EXAMPLE,
    PROCFILE_NAME,
    RABBITMQ_CONF,
    ROOT,
    InterpolationError,
    env_example,
    env_example_documented,
    interpolate,
    interpolate_tree,
    load_yaml,
    makefile_migrate_commands,
    variables_in,
    variables_read_by_code,
)
from tests.support.processes import procfile

APP_SERVICES = {"migrate", "api", "worker", "worker-io", "beat", "deadletters", "flower"}
BACKING_SERVICES = {"postgres", "rabbitmq", "redis"}
LONG_RUNNING = (APP_SERVICES | BACKING_SERVICES) - {"migrate"}
SECRET_KEY_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|AUTH")


def compose_schema() -> dict[str, Any]:
    # The Compose specification's schema, as check-jsonschema ships it (Apache-2.0).
    schema = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


def rendered(path: Any = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as `docker compose --env-file deployments/.env.example config` sees it."""
    document: dict[str, Any] = interpolate_tree(load_yaml(path), env_example())
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return rendered()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    raw_document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return raw_document


@pytest.mark.parametrize("path", [COMPOSE_FILE, COMPOSE_BACKENDS_FILE], ids=lambda p: p.name)
def test_compose_files_are_valid_against_the_compose_specification(path):
    validator = jsonschema.Draft202012Validator(
        compose_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(rendered(path))
    ]
    assert errors == []


def test_the_schema_check_catches_a_broken_compose_file(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["worker"]["restart"] = 3
    errors = jsonschema.Draft202012Validator(compose_schema()).iter_errors(broken)
    paths = {"/".join(map(str, e.absolute_path)) for e in errors}
    assert {"services/api/depends_on", "services/worker/restart"} <= paths
    assert all(path.startswith(("services/api", "services/worker/")) for path in paths)


def test_the_stack_has_every_service_of_the_issue(compose):
    assert set(compose["services"]) == APP_SERVICES | BACKING_SERVICES
    assert compose["services"]["rabbitmq"]["image"].startswith("rabbitmq:3.10-management")
    assert compose["services"]["postgres"]["image"] == "postgres:15"


@pytest.mark.parametrize("service", sorted(PROCFILE_NAME))
def test_each_process_runs_the_procfiles_command_word_for_word(raw, service):
    assert raw["services"][service]["command"] == procfile()[PROCFILE_NAME[service]]


def test_flower_runs_on_the_app_and_its_broker(raw):
    assert shlex.split(raw["services"]["flower"]["command"])[:4] == [
        "celery",
        "-A",
        "taskflow",
        "flower",
    ]


def test_the_migrate_one_shot_does_what_make_migrate_does(raw):
    command = shlex.split(raw["services"]["migrate"]["command"])
    assert command[:2] == ["sh", "-c"]
    assert command[2].split(" && ") == makefile_migrate_commands(deployed=True)
    # Except the queue policies: the compose broker loads them from definitions.json at boot,
    # `make migrate` sets them on the local broker (the app image has no rabbitmqctl).
    assert makefile_migrate_commands() == [
        "python manage.py migrate --no-input",
        "python manage.py setup_broker --policies",
    ]


def test_every_variable_the_compose_files_use_is_set_in_env_example():
    example = env_example()
    for path in (COMPOSE_FILE, COMPOSE_BACKENDS_FILE):
        missing = variables_in(path.read_text()) - set(example)
        assert not missing, f"{path.name} uses {sorted(missing)}: add them to {ENV_EXAMPLE.name}"
        # Required ones (${NAME:?...}) must have a value, so that a copy of the example starts.
        interpolate(path.read_text(), example)


def test_a_missing_required_secret_stops_compose_with_its_name():
    example = env_example()
    del example["POSTGRES_PASSWORD"]
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD: set POSTGRES_PASSWORD in"):
        interpolate(COMPOSE_FILE.read_text(), example)


def test_every_variable_the_processes_read_is_documented_in_env_example():
    documented = env_example_documented()
    read = variables_read_by_code()
    for command in procfile().values():
        for name in variables_in(command):
            read.setdefault(name, set()).add("Procfile")
    undocumented = {name: sorted(where) for name, where in read.items() if name not in documented}
    assert not undocumented, f"document these in deployments/.env.example: {undocumented}"
    # The scan does find what settings read (so an empty result above means something).
    assert {"SECRET_KEY", "DATABASE_URL", "WORKER_CONCURRENCY", "IO_WORKER_MAX"} <= set(read)


def test_the_io_worker_autoscales_between_seed_003s_bounds_by_default():
    command = procfile()["worker-io"]
    assert "--autoscale=${IO_WORKER_MAX:-50},${IO_WORKER_MIN:-5}" in shlex.split(command)
    assert "--pool" in command and "prefork" in shlex.split(command)
    example = env_example()
    assert (example["IO_WORKER_MIN"], example["IO_WORKER_MAX"]) == ("5", "50")


def test_the_service_urls_are_built_from_seed_002s_variables(compose):
    example = env_example()
    environment = compose["services"]["worker"]["environment"]
    assert environment["DATABASE_URL"] == (
        f"postgres://{example['POSTGRES_USER']}:{example['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{example['POSTGRES_DB']}"
    )
    assert environment["CELERY_BROKER_URL"] == (
        f"amqp://{example['AMQP_USER']}:{example['AMQP_PASSWORD']}@rabbitmq:5672//"
    )
    assert environment["REDIS_URL"] == f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0"
    # The postgres and rabbitmq containers create exactly the user those URLs log in with.
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == example["POSTGRES_USER"]
    assert services["rabbitmq"]["environment"]["AMQP_USER"] == example["AMQP_USER"]


def test_secrets_come_only_from_the_env_file(raw):
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_KEY_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value), f"{name}.{key}={value}"
            for userinfo in re.findall(r"://([^@/]*)@", value):
                literal = re.sub(r"\$\{[^}]*\}", "", userinfo)
                assert literal in ("", ":"), f"{name}.{key} has a literal credential"
        assert service.get("env_file", ".env") == ".env"


def test_every_long_running_service_has_a_health_check(compose):
    for name in LONG_RUNNING:
        healthcheck = compose["services"][name].get("healthcheck", {})
        assert not healthcheck.get("disable"), name
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert healthcheck["interval"] and healthcheck["timeout"] and healthcheck["retries"], name
    # The one-shot exits when done; its dependents wait for it to complete instead.
    assert compose["services"]["migrate"]["healthcheck"] == {"disable": True}


def test_worker_health_checks_ping_the_node_names_of_the_procfile(compose):
    for name in ("worker", "worker-io"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[1:] == ["python", "deployments/healthcheck.py", "worker", name]
        assert f"--hostname {name}@%h" in procfile()[name]


def test_dependencies_wait_for_health_and_for_the_migration(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert not services[dependency].get("healthcheck", {}).get("disable")
            else:
                assert (dependency, condition) == ("migrate", "service_completed_successfully")
    for name in APP_SERVICES - {"migrate", "flower"}:
        assert set(services[name]["depends_on"]) == BACKING_SERVICES | {"migrate"}, name
    assert set(services["migrate"]["depends_on"]) == {"postgres", "rabbitmq"}


def test_restart_policies(compose):
    for name in LONG_RUNNING:
        assert compose["services"][name]["restart"] == "unless-stopped", name
    assert compose["services"]["migrate"]["restart"] == "no"


def published(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_only_ports_a_user_needs_are_published(compose):
    services = compose["services"]
    assert {name for name, s in services.items() if published(s)} == {"api", "rabbitmq", "flower"}
    assert published(services["api"]) == ["8000:8000"]
    # Operators' UIs only on the loopback interface.
    assert published(services["rabbitmq"]) == ["127.0.0.1:15672:15672"]
    assert published(services["flower"]) == ["127.0.0.1:5555:5555"]
    # The API container listens where the published port points, whatever PORT says.
    assert services["api"]["environment"]["PORT"] == "8000"
    assert services["api"]["environment"]["HOST"] == "0.0.0.0"


def test_the_backends_file_publishes_only_on_the_private_address():
    backends = rendered(COMPOSE_BACKENDS_FILE)
    address = env_example()["BACKEND_BIND_ADDRESS"]
    assert set(backends["services"]) == BACKING_SERVICES
    for name, service in backends["services"].items():
        for port in published(service):
            assert port.startswith(f"{address}:"), f"{name}: {port}"


def test_data_and_user_files_live_in_named_volumes(compose):
    services = compose["services"]
    assert set(compose["volumes"]) == {"pgdata", "rabbitmqdata", "files"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "rabbitmqdata:/var/lib/rabbitmq" in services["rabbitmq"]["volumes"]
    for name in ("api", "worker", "worker-io"):
        assert services[name]["volumes"] == ["files:/app/var/media"], name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOYMENTS / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_exactly_one_beat(compose):
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_every_app_service_runs_the_one_image_built_from_the_dockerfile(compose):
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["image"] == env_example()["TASKFLOW_IMAGE"], name
        assert service["build"] == {"context": "..", "dockerfile": "deployments/Dockerfile"}
        assert service["init"] is True, name
    assert (ROOT / compose["services"]["api"]["build"]["dockerfile"]).is_file()


def test_the_broker_config_loads_the_mounted_definitions_and_matches_the_consumer_timeout(compose):
    conf = dict(
        line.split(" = ", 1)
        for line in RABBITMQ_CONF.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    mounts = {
        PurePosixPath(volume.split(":")[1]).name: volume.split(":")[1]
        for volume in compose["services"]["rabbitmq"]["volumes"]
    }
    definitions_dir = PurePosixPath(conf["load_definitions"])
    assert PurePosixPath(mounts["10-topology.json"]).parent == definitions_dir
    assert "/etc/rabbitmq/conf.d/" in mounts["90-taskflow.conf"]
    # settings' RABBITMQ_CONSUMER_TIMEOUT_SECONDS (checked against the task time limits) is this.
    seconds = int(env_example()["RABBITMQ_CONSUMER_TIMEOUT_SECONDS"])
    assert int(conf["consumer_timeout"]) == seconds * 1000


def test_the_api_listens_per_worker_where_queued_connections_move_to_the_others(raw):
    # gunicorn's workers each listen on a socket of their own (WEB_REUSE_PORT empty: on exactly
    # when the container's kernel has tcp_migrate_req=1), and a stopping worker resets nothing.
    sysctls = raw["services"]["api"]["sysctls"]
    assert str(sysctls["net.ipv4.tcp_migrate_req"]) == "1"
    assert env_example()["WEB_REUSE_PORT"] == ""
