"""docker-compose.yml and deploy/Dockerfile, checked without Docker.

The machines this project is built on have no Docker engine, so nothing here starts a
container. Instead the compose file is read with PyYAML (anchors and ``<<`` merges
resolved, as compose does) and held against the code it runs: each service's
``Settings`` (which environment variables it reads, which port it listens on), the code
that reads those settings, the packages the commands name, and the Dockerfile.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import functools
import importlib
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices, AliasPath, TypeAdapter
from pydantic.fields import FieldInfo

from services.common import healthcheck
from services.common.config import BaseServiceSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = "deploy/Dockerfile"

# The services of DESIGN.md's table, each `python -m services.<name>`.
DESIGN_SERVICES = (
    "contacts",
    "segmentation",
    "campaigns",
    "triggers",
    "delivery",
    "tracking",
    "gateway",
)
INIT = "init"  # the one-shot that creates the topics and migrates, before any service starts

# Infrastructure images: Kafka exactly the version the tests run on (deploy/local/kafka.py),
# PostgreSQL and Redis by major version, Jaeger and Mailpit by repository (any tag).
INFRA_IMAGES = {
    "kafka": "apache/kafka:4.1.1",
    "postgres": "postgres:16",
    "redis": "redis:7",
    "jaeger": "jaegertracing/all-in-one:",
    "mailpit": "axllent/mailpit:",
}
# The ports those images listen on inside the compose network (their defaults). Kafka's is
# read from its advertised listeners instead, below.
INFRA_PORTS = {"postgres": {5432}, "redis": {6379}, "jaeger": {4317}, "mailpit": {1025}}
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "redis": 6379, "smtp": 25}

# Read by Python or the OpenTelemetry SDK rather than by a Settings class.
STANDARD_ENV = {
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "TZ",
}
# Variables that may be set to different values in different services (none today).
MAY_DIFFER: set[str] = set()
# Where every gRPC server and uvicorn listen (services.common; default 127.0.0.1 for
# `make run`): 0.0.0.0 in containers. Accepted here whether or not a Settings class declares
# it; when one does, its value is checked like any other.
BIND_HOST = "NUDGE_BIND_HOST"
# Values only development may use: the services refuse them unless NUDGE_DEV_MODE=1.
DEV_VALUES = re.compile(r"dev-|:nudge@")


# ---- reading the compose file ------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def nudge_services() -> list[str]:
    """Compose services that run a Nudge service (built from our image, but not init)."""
    return [name for name, svc in services().items() if "build" in svc and name != INIT]


def command(name: str) -> list[str]:
    cmd = services()[name].get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}"
)
# What the tests put where compose requires the operator's value (``${VAR:?message}``).
OPERATOR_VALUE = "operator-secret"


def interpolate(value: str) -> str:
    """What compose makes of ``value`` when the operator's environment sets only what it
    must: the defaults of ``${VAR:-default}`` / ``${VAR-default}``, empty for ``${VAR}``,
    :data:`OPERATOR_VALUE` for a required ``${VAR:?message}``."""

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if (match.group("op") or "").endswith("?"):
            return OPERATOR_VALUE
        return match.group("default") or ""

    return _VARIABLE.sub(resolve, value)


def raw_environment(name: str) -> dict[str, str]:
    env = services()[name].get("environment", {})
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def environment(name: str) -> dict[str, str]:
    return {key: interpolate(value) for key, value in raw_environment(name).items()}


def depends_on(name: str) -> dict[str, str]:
    """Each dependency of ``name`` with its condition (the short list form means started)."""
    deps = services()[name].get("depends_on", {})
    if isinstance(deps, list):
        return {dep: "service_started" for dep in deps}
    return {dep: spec.get("condition", "service_started") for dep, spec in deps.items()}


def container_ports(name: str) -> set[int]:
    """Ports ``name`` publishes or exposes, on the container's side."""
    ports: set[int] = set()
    for entry in services()[name].get("ports", []):
        spec = str(entry["target"]) if isinstance(entry, dict) else str(entry)
        ports.add(int(spec.split("/")[0].rsplit(":", 1)[-1]))
    ports.update(int(str(port).split("/")[0]) for port in services()[name].get("expose", []))
    return ports


def endpoints(value: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs a setting points at: URLs, HOST:PORT, comma-separated lists."""
    found: list[tuple[str, int | None]] = []
    for part in value.split(","):
        part = part.strip()
        if "://" in part:
            url = urlsplit(part)
            if url.hostname:
                found.append((url.hostname, url.port or DEFAULT_PORTS.get(url.scheme)))
        elif re.fullmatch(r"[A-Za-z0-9.-]+:\d+", part):
            host, port = part.rsplit(":", 1)
            found.append((host, int(port)))
    return found


# ---- reading the Settings ----------------------------------------------------------------


def settings_class(name: str) -> type[BaseServiceSettings]:
    if name == INIT:  # the topics step and services.migrate
        init: type[BaseServiceSettings] = importlib.import_module("services.migrate").Settings
        return init
    cls: object = importlib.import_module(f"services.{name}.config").Settings
    assert isinstance(cls, type) and issubclass(cls, BaseServiceSettings), name
    return cls


def _alias_names(alias: str | AliasChoices | AliasPath | None) -> list[str]:
    if alias is None:
        return []
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    return [name for choice in alias.choices for name in _alias_names(choice)]


def env_names(cls: type[BaseServiceSettings]) -> dict[str, str]:
    """Every environment variable ``cls`` reads, with the field it fills. The rules of
    pydantic-settings: a field without a validation alias is read as ``env_prefix`` + its
    name; one with aliases under each alias, and also under prefix + name when the config
    populates by name (BaseServiceSettings does). Case-insensitive, so upper-cased here."""
    config = cls.model_config
    prefix = str(config.get("env_prefix", ""))
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        aliases = _alias_names(field.validation_alias)
        if not aliases or by_name:
            aliases.append(prefix + field_name)
        names.update({alias.upper(): field_name for alias in aliases})
    return names


@contextlib.contextmanager
def only_compose_environment(name: str) -> Iterator[None]:
    """os.environ as the container would have it, for what ``name``'s Settings read: the
    variables compose sets, and none of the ones this test run happens to have."""
    with mock.patch.dict(os.environ):
        for variable in env_names(settings_class(name)):
            os.environ.pop(variable, None)
        os.environ.update(environment(name))
        yield


def settings_in_compose(name: str) -> BaseServiceSettings:
    with only_compose_environment(name):
        return settings_class(name)()


def listening_port(name: str) -> tuple[str, int]:
    """(``grpc`` or ``http``, port) of a Nudge service, as its Settings read it in compose."""
    settings = settings_in_compose(name)
    for kind in ("grpc", "http"):
        port = getattr(settings, f"{kind}_port", None)
        if isinstance(port, int):
            return kind, port
    raise AssertionError(f"services/{name}/config.py: Settings has no grpc_port nor http_port")


def ports_of(target: str) -> set[int]:
    """Where a compose service listens for the other containers."""
    if target == "kafka":
        advertised = environment("kafka")["KAFKA_ADVERTISED_LISTENERS"]
        return {port for host, port in endpoints(advertised) if host == "kafka" and port}
    if target in INFRA_PORTS:
        return INFRA_PORTS[target]
    return {listening_port(target)[1]}


def fields_read_by_code(name: str) -> set[str]:
    """Settings fields that the code of services/<name> reads (``settings.x``,
    ``self._settings.x``, ``app.state.settings.x``...)."""
    fields = set(settings_class(name).model_fields)
    read: set[str] = set()
    for path in (ROOT / "services" / name).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or node.attr not in fields:
                continue
            owner = node.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if owner_name.lower().endswith("settings"):
                read.add(node.attr)
    return read


def points_at_this_machine(field: FieldInfo) -> bool:
    """A default made for `make run` (everything on 127.0.0.1), wrong inside a container."""
    return isinstance(field.default, str) and bool(
        re.search(r"(^|[/@])(127\.0\.0\.1|localhost)([:/]|$)", field.default)
    )


# ---- the compose file is well-formed -----------------------------------------------------


def test_all_seven_services_of_the_design_run_in_compose() -> None:
    assert sorted(nudge_services()) == sorted(DESIGN_SERVICES)


@pytest.mark.parametrize("name", sorted(INFRA_IMAGES))
def test_infrastructure_runs_the_images_the_design_names(name: str) -> None:
    image, expected = services()[name]["image"], INFRA_IMAGES[name]
    if expected.endswith(":"):  # any tag of that repository
        assert image.startswith(expected) and image != expected
    else:
        assert image == expected


def test_every_service_is_an_image_or_built_from_the_one_dockerfile() -> None:
    assert (ROOT / DOCKERFILE).is_file()
    for name, svc in services().items():
        if "build" in svc:
            build = svc["build"]
            assert isinstance(build, dict), f"{name}: build must name {DOCKERFILE}"
            assert (COMPOSE_FILE.parent / build.get("context", ".")).resolve() == ROOT, name
            assert build.get("dockerfile") == DOCKERFILE, name
        else:
            assert svc.get("image"), f"{name}: neither image nor build"


@pytest.mark.parametrize("name", nudge_services())
def test_each_service_runs_its_own_package(name: str) -> None:
    assert command(name) == ["python", "-m", f"services.{name}"]
    assert (ROOT / "services" / name / "__main__.py").is_file()


def test_every_dependency_exists_and_is_waited_for_as_it_can_be() -> None:
    """Infrastructure and services with a health check are waited for until healthy, init
    until it exits 0, the rest (Jaeger) until started; compose refuses a cycle."""
    for name in services():
        for target, condition in depends_on(name).items():
            assert target in services(), f"{name} depends on {target}, which is not in compose"
            if target == INIT:
                expected = "service_completed_successfully"
            elif "healthcheck" in services()[target]:
                expected = "service_healthy"
            else:
                expected = "service_started"
            assert condition == expected, f"{name} -> {target}"
    # Depth-first search for a cycle.
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in depends_on(name):
                visit(target, (*path, name))
            done.add(name)

    for name in services():
        visit(name, ())


@pytest.mark.parametrize("name", nudge_services())
def test_each_service_waits_for_the_topics_and_migrations(name: str) -> None:
    assert depends_on(name).get(INIT) == "service_completed_successfully"


def test_init_creates_the_topics_then_migrates_every_schema() -> None:
    argv = command(INIT)
    assert argv[:2] == ["sh", "-c"], "init runs two steps, joined by &&"
    steps = shlex.split(argv[2])
    assert steps[:2] == ["python", "-c"] and steps[3:] == ["&&", "python", "-m", "services.migrate"]
    code = ast.parse(steps[2])  # the topic step is valid Python...
    imported = {
        (node.module, alias.name)
        for node in ast.walk(code)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    # ...that imports what exists: ensure_topics(bootstrap, topics) and the topic table.
    assert {
        ("deploy.local.topics", "ensure_topics"),
        ("services.common.topics", "TOPICS"),
    } <= imported
    topics_module = ast.parse((ROOT / "deploy/local/topics.py").read_text())
    ensure = [
        node
        for node in topics_module.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "ensure_topics"
    ]
    assert ensure and [arg.arg for arg in ensure[0].args.args[:2]] == ["bootstrap", "topics"]
    assert (ROOT / "services/migrate.py").is_file()
    assert "restart" in services()[INIT] and services()[INIT]["restart"] == "no"


# ---- environment variables against the Settings ----------------------------------------


@pytest.mark.parametrize("name", [*nudge_services(), INIT])
def test_every_variable_set_is_one_the_service_reads(name: str) -> None:
    accepted = set(env_names(settings_class(name))) | STANDARD_ENV | {BIND_HOST}
    unread = sorted(set(environment(name)) - accepted)
    assert not unread, f"{name}: no Settings field reads {unread}"


@pytest.mark.parametrize("name", [*nudge_services(), INIT])
def test_settings_built_from_compose_hold_what_compose_gives(name: str) -> None:
    """Each variable lands in the field it is meant for, with a value of the field's type
    (a port that is not a number fails here, not at `docker compose up`)."""
    cls = settings_class(name)
    names = env_names(cls)
    settings = settings_in_compose(name)
    for variable, value in environment(name).items():
        if variable in STANDARD_ENV or (variable == BIND_HOST and variable not in names):
            continue
        field = names[variable]
        annotation = cls.model_fields[field].annotation
        assert annotation is not None
        expected = TypeAdapter(annotation).validate_python(value)
        assert getattr(settings, field) == expected, f"{name}: {variable}"


@pytest.mark.parametrize("name", nudge_services())
def test_every_address_the_code_reads_is_set_for_the_container(name: str) -> None:
    """A field the service's code reads whose default points at 127.0.0.1 (made for
    `make run`) must be set in compose: in a container, 127.0.0.1 is the container."""
    cls = settings_class(name)
    names = env_names(cls)
    set_fields = {names[variable] for variable in environment(name) if variable in names}
    missing = sorted(
        field
        for field in fields_read_by_code(name)
        if points_at_this_machine(cls.model_fields[field]) and field not in set_fields
    )
    assert not missing, f"{name} reads {missing} but compose leaves them at 127.0.0.1"


@pytest.mark.parametrize("name", nudge_services())
def test_every_secret_must_be_given_by_the_operator(name: str) -> None:
    """Secret fields (``repr=False``) are set as ``${SAME_NAME:?message}``: compose refuses
    to start without them, instead of running with a development value everyone knows."""
    cls = settings_class(name)
    raw = raw_environment(name)
    prefix = str(cls.model_config.get("env_prefix", ""))
    for field_name, field in cls.model_fields.items():
        if field.repr:
            continue  # not a secret
        # Its documented name: the alias if it has one, else the prefixed field name.
        variable = (_alias_names(field.validation_alias) or [prefix + field_name])[0].upper()
        assert variable in raw, f"{name}: secret {variable} not set"
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", raw[variable]), (
            f"{name}: {variable} should be ${{{variable}:?<message>}}, is {raw[variable]!r}"
        )


def test_no_development_value_nor_development_mode_ships_in_compose() -> None:
    """Not a dev default among the values, the PostgreSQL password included (it is the
    operator's too), and never NUDGE_DEV_MODE, which lets a service accept dev values."""
    for name in services():
        for variable, value in environment(name).items():
            assert variable != "NUDGE_DEV_MODE", name
            assert not DEV_VALUES.search(value), f"{name}: {variable}={value!r}"
    assert raw_environment("postgres")["POSTGRES_PASSWORD"].startswith(
        "${NUDGE_POSTGRES_PASSWORD:?"
    )
    assert "${NUDGE_POSTGRES_PASSWORD:?" in raw_environment("contacts")["DATABASE_URL"]


@pytest.mark.parametrize("name", nudge_services())
def test_each_service_listens_on_every_interface_of_its_container(name: str) -> None:
    """Other containers reach a service through the compose network: 127.0.0.1, the
    services' default (right for `make run`), would shut them out."""
    assert environment(name).get(BIND_HOST) == "0.0.0.0"


def test_the_image_listens_on_every_interface_by_default() -> None:
    """The image runs in containers only, compose or not (docker run, Kubernetes)."""
    runtime = "\n".join(dockerfile_stages()[-1][1])
    assert re.search(rf"^ENV .*\b{BIND_HOST}=0\.0\.0\.0\b", runtime, re.MULTILINE)


@pytest.mark.parametrize("name", nudge_services())
def test_each_service_sends_traces_to_jaeger(name: str) -> None:
    assert environment(name).get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4317"


def test_a_variable_several_services_read_has_one_value() -> None:
    """The link secret delivery signs with is the one tracking verifies with; every service
    talks to the same database, broker and token."""
    values: dict[str, dict[str, str]] = {}
    for name in [*nudge_services(), INIT]:
        for variable, value in raw_environment(name).items():
            values.setdefault(variable, {})[name] = value
    for variable, by_service in values.items():
        if variable not in MAY_DIFFER:
            assert len(set(by_service.values())) == 1, f"{variable} differs: {by_service}"


# ---- ports, addresses and what waits for what --------------------------------------------


@pytest.mark.parametrize("name", nudge_services())
def test_each_service_is_probed_and_exposed_on_the_port_it_listens_on(name: str) -> None:
    kind, port = listening_port(name)
    test = [str(part) for part in services()[name]["healthcheck"]["test"]]
    assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name
    probe = healthcheck.parse_args(test[4:])  # the probe module accepts these arguments
    if kind == "grpc":
        assert (probe.kind, probe.target) == ("grpc", f"127.0.0.1:{port}")
    else:
        assert (probe.kind, probe.url) == ("http", f"http://127.0.0.1:{port}/healthz")
    assert container_ports(name) == {port}, f"{name} listens on {port}"


# Addresses a service asks only on demand, and that depend on it in turn (a cycle if it
# waited for them): contacts asks every service for its part of a contact's export, and
# names one that is not up yet as incomplete (services/contacts/privacy.py).
ON_DEMAND = {("contacts", host) for host in ("segmentation", "campaigns", "triggers", "delivery")}


@pytest.mark.parametrize("name", [*nudge_services(), INIT])
def test_every_address_names_a_compose_service_on_the_port_it_listens_on(name: str) -> None:
    """Whatever a setting points at inside the network (postgres:5432, contacts:50051,
    kafka:9092...) is a compose service, listening on that port, and started first."""
    for variable, value in environment(name).items():
        for host, port in endpoints(value):
            if host in ("localhost", "127.0.0.1"):
                continue  # a public URL, for the host's browser (NUDGE_TRACKING_URL)
            assert host in services(), f"{name}: {variable} points at unknown host {host}"
            assert port in ports_of(host), f"{name}: {variable}: {host} listens on {ports_of(host)}"
            if (name, host) in ON_DEMAND:
                continue
            assert host in depends_on(name), f"{name} uses {host} ({variable}) but starts first"


@pytest.mark.parametrize("name", nudge_services())
def test_each_nudge_addr_points_at_the_service_it_names(name: str) -> None:
    for variable, value in environment(name).items():
        match = re.fullmatch(r"NUDGE_([A-Z]+)_ADDR", variable)
        if match:
            target = match.group(1).lower()
            assert value == f"{target}:{listening_port(target)[1]}", f"{name}: {variable}"


@pytest.mark.parametrize("name", [*nudge_services(), INIT])
def test_kafka_postgres_and_redis_are_healthy_before_a_service_uses_them(name: str) -> None:
    env = environment(name)
    for variable, infra in [
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka"),
        ("DATABASE_URL", "postgres"),
        ("REDIS_URL", "redis"),
    ]:
        if variable in env:
            assert depends_on(name).get(infra) == "service_healthy", f"{name} uses {infra}"


# ---- the infrastructure ------------------------------------------------------------------


def test_kafka_is_one_kraft_node_the_services_can_reach() -> None:
    kafka = services()["kafka"]
    env = environment("kafka")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    # Every listener has a protocol, and the containers' one is what the services dial.
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = [item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")]
    assert set(listeners) <= set(protocols)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    # One broker: a replication factor or minimum ISR above 1 would leave topics uncreated.
    factors = {k: v for k, v in env.items() if k.endswith(("_REPLICATION_FACTOR", "_MIN_ISR"))}
    assert factors and set(factors.values()) == {"1"}, factors
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    # The services are told the truth about the broker software (its version is the tag).
    version = kafka["image"].split(":")[1]
    for name in nudge_services():
        if "KAFKA_BOOTSTRAP_SERVERS" in environment(name):
            assert environment(name)["NUDGE_KAFKA_KIND"] == f"apache-kafka {version}", name


@pytest.mark.parametrize("name", ["kafka", "postgres", "redis", "mailpit"])
def test_infrastructure_others_wait_for_has_a_health_check(name: str) -> None:
    test = " ".join(str(part) for part in services()[name]["healthcheck"]["test"])
    expected = {
        "kafka": "kafka-broker-api-versions.sh",
        "postgres": "pg_isready",
        "redis": "redis-cli ping",
        "mailpit": "readyz",
    }[name]
    assert expected in test


def test_jaeger_accepts_otlp() -> None:
    assert environment("jaeger").get("COLLECTOR_OTLP_ENABLED") == "true"
    assert {16686, 4317} <= container_ports("jaeger")


# ---- the image ---------------------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(base image, instructions) per stage, ARG defaults substituted, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / DOCKERFILE).read_text())
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), re.MULTILINE))
    stages: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), line.split()[1])
            stages.append((image, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def test_the_image_is_multi_stage_slim_and_runs_as_a_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2 and all(image == "python:3.11-slim" for image, _ in stages)
    builder, runtime = "\n".join(stages[0][1]), "\n".join(stages[-1][1])
    # The builder installs Nudge itself, not editable and without the dev extra.
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", builder) and "[dev]" not in builder
    assert "-e ." not in builder and "--editable" not in builder
    # The runtime stage compiles nothing and gets the venv ready-made.
    assert not re.search(r"apt-get install|build-essential|gcc", runtime)
    assert re.search(r"COPY --from=\S+ /opt/nudge /opt/nudge", runtime)
    assert re.search(r"PYTHONUNBUFFERED=1", runtime)
    user = [line.split()[1] for line in stages[-1][1] if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / DOCKERFILE).read_text(), re.MULTILINE)
    for source in (source for line in copied for source in line.split()):
        assert f"!{source.rstrip('/')}" in ignore, f".dockerignore leaves out {source}"


def test_the_installed_package_carries_the_files_the_services_read() -> None:
    """pip installs only what setuptools packs: .py files, plus package-data. The SQL
    migrations are read from beside the code at start-up, so without a package-data entry
    for them the image would hold no migrations at all (the Dockerfile checks it too)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    missing = []
    for path in sorted((ROOT / "services").rglob("*")):
        if (
            not path.is_file()
            or path.suffix in (".py", ".pyc", ".pyi")
            or "__pycache__" in path.parts
        ):
            continue
        package_dir = next(p for p in path.parents if (p / "__init__.py").is_file())
        package = ".".join(package_dir.relative_to(ROOT).parts)
        relative = path.relative_to(package_dir).as_posix()
        if not any(
            fnmatch.fnmatch(package, key) and any(fnmatch.fnmatch(relative, glob) for glob in globs)
            for key, globs in package_data.items()
        ):
            missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, (
        "not installed by pip (add to [tool.setuptools.package-data] in pyproject.toml, "
        f'e.g. "*" = ["migrations/*.sql"]): {missing}'
    )
