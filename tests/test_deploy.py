"""The deployment material in deploy/: redis.conf runs, and every supervisor gives workers
more time to stop than their shutdown grace."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from swarmbus.settings import Settings
from swarmbus.testing import REDIS_SERVER, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DEFAULT_GRACE = float(Settings.model_fields["shutdown_grace"].default)


def _need_redis_server() -> str:
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; CI must check deploy/redis.conf")
        pytest.skip("redis-server not on PATH: deploy/redis.conf not checked "
                    "(apt-get install redis)")
    return REDIS_SERVER


# -- redis.conf ----------------------------------------------------------------------------


@pytest.fixture
def deploy_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """redis-server with deploy/redis.conf, made private by command-line overrides only."""
    binary = _need_redis_server()
    port = free_port()
    log = tmp_path / "redis.log"
    proc = subprocess.Popen(
        [binary, str(DEPLOY / "redis.conf"),
         "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--daemonize", "no", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2,
                         decode_responses=True)
    try:
        for _ in range(500):
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    text = log.read_text(errors="replace") if log.exists() else ""
                    pytest.fail(f"redis-server rejected deploy/redis.conf:\n{err}{text[-2000:]}")
                time.sleep(0.02)
        else:
            pytest.fail("redis-server with deploy/redis.conf did not answer PING within 10 s")
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_redis_conf_is_accepted_and_durable(deploy_redis: redis.Redis) -> None:
    def get(name: str) -> str:
        return str(deploy_redis.config_get(name)[name])

    assert get("appendonly") == "yes"
    assert get("appendfsync") == "everysec"
    assert get("aof-use-rdb-preamble") == "yes"
    assert get("maxmemory-policy") == "noeviction"
    assert get("save") != ""  # an RDB schedule besides the AOF
    assert get("notify-keyspace-events") == ""
    assert get("timeout") == "0"
    assert int(get("tcp-keepalive")) > 0
    assert int(get("stream-node-max-entries")) > 0
    assert int(get("busy-reply-threshold")) > 0
    # the overrides won: the test server is private
    assert get("bind") == "127.0.0.1"
    # and it works as a bus backend: a stream with a consumer group
    deploy_redis.xgroup_create("s", "g", id="$", mkstream=True)
    deploy_redis.xadd("s", {"v": "1"})
    assert deploy_redis.xreadgroup("g", "c", {"s": ">"}, count=1)


# -- docker ----------------------------------------------------------------------------------


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML not installed: compose/k8s files not parsed")


def _seconds(duration: str | int | float) -> float:
    """A Compose duration (`30s`, `1m30s`, `1500ms`) or a number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _grace(env: dict[str, Any] | list[dict[str, Any]]) -> float:
    """The SWARMBUS_SHUTDOWN_GRACE a service runs with (compose mapping or k8s env list)."""
    if isinstance(env, list):
        env = {e["name"]: e.get("value") for e in env}
    value = env.get("SWARMBUS_SHUTDOWN_GRACE")
    return DEFAULT_GRACE if value is None else float(value)


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["swarmbus"\]$', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "the image must not run as root"
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"


def test_compose_services() -> None:
    yaml = _yaml()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "coordinator", "workers", "market-feed"} <= set(services)

    db = services["redis"]
    assert db["image"].startswith("redis:7")
    assert any(v.startswith("./redis.conf:") for v in db["volumes"])
    assert any(v.split(":")[0] in compose["volumes"] and v.split(":")[1] == "/data"
               for v in db["volumes"])
    assert "redis-cli" in str(db["healthcheck"]["test"])
    assert "ping" in str(db["healthcheck"]["test"])

    assert services["coordinator"]["command"] == ["coordinator"]
    assert services["workers"]["command"] == ["run", "examples.trading:fleet"]
    assert services["workers"]["deploy"]["replicas"] >= 2
    assert services["market-feed"]["entrypoint"][:3] == ["python", "-m", "examples.trading"]
    assert services["market-feed"]["command"][0] == "feed"

    for name in ("coordinator", "workers", "market-feed"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        assert service["environment"]["SWARMBUS_REDIS_URL"].startswith("redis://redis:")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("coordinator", "workers"):
        service = services[name]
        assert service["restart"] == "unless-stopped"
        grace = _grace(service["environment"])
        assert _seconds(service["stop_grace_period"]) > grace >= DEFAULT_GRACE


# -- kubernetes --------------------------------------------------------------------------------


def _deployment(name: str) -> dict[str, Any]:
    yaml = _yaml()
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 1
    deployment: dict[str, Any] = deployments[0]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    return deployment


@pytest.mark.parametrize(("name", "args"), [
    ("workers.yaml", ["run", "examples.trading:fleet"]),
    ("coordinator.yaml", ["coordinator"]),
])
def test_k8s_deployments(name: str, args: list[str]) -> None:
    deployment = _deployment(name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == args
    env = {e["name"]: e for e in container["env"]}
    assert env["SWARMBUS_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"]
    assert pod["terminationGracePeriodSeconds"] > _grace(container["env"]) >= DEFAULT_GRACE
    assert pod["securityContext"]["runAsNonRoot"] is True
    if name == "coordinator.yaml":
        assert deployment["spec"]["replicas"] == 2


# -- systemd -----------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    """`key -> values` of a unit file (comments and sections flattened)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize(("name", "command"), [
    ("swarmbus-worker@.service", "run %I"),
    ("swarmbus-coordinator.service", "coordinator"),
])
def test_systemd_units(name: str, command: str) -> None:
    unit = _unit(name)
    (exec_start,) = unit["ExecStart"]
    binary, _, arguments = exec_start.partition(" ")
    assert binary.endswith("/swarmbus") and arguments == command
    assert unit["KillSignal"] == ["SIGTERM"]
    assert float(unit["TimeoutStopSec"][0]) > DEFAULT_GRACE
    assert unit["Restart"] == ["on-failure"]
    assert "/etc/swarmbus/env" in unit["EnvironmentFile"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert unit["User"] != ["root"]

    env_example = (DEPLOY / "systemd" / "env.example").read_text()
    assert re.search(r"^SWARMBUS_REDIS_URL=", env_example, re.M)
