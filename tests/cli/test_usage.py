"""Help, version, and bad input: exit 2 (usage) or 1 (runtime), one line, no traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

import swarmbus
from swarmbus.cli import duration, main, since
from swarmbus.testing import free_port
from tests.cli.runner import CLI, one_error_line

COMMANDS = [
    ["run"], ["publish"], ["tail"], ["status"], ["agents"], ["groups"], ["dlq"],
    ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"], ["dlq", "purge"], ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: swarmbus {' '.join(command)}")
    assert "examples:\n  swarmbus " in out
    description = out.split("\n\n")[1]
    assert "\n" not in description.strip() and description.strip().endswith(".")


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "publish", "tail", "status", "agents", "groups", "dlq", "demo"):
        assert f"\n    {name} " in out
    assert "--redis URL" in out and "example" in out


def test_version_as_a_user_runs_it(offline_cli: CLI) -> None:
    result = offline_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"swarmbus {swarmbus.__version__}\n"


USAGE_ERRORS = [
    ([], "missing command: see 'swarmbus --help'"),
    (["--bogus", "status", "x"], "unrecognized arguments: --bogus"),
    (["status", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["dlq"], "missing command: see 'swarmbus dlq --help'"),
    (["publish"], "required: TYPE"),
    (["publish", "PING", "--data", "{bad"], "--data is not valid JSON: Expecting property name"),
    (["publish", "PING", "--data", "[1, 2]"], "--data must be a JSON object, got list"),
    (["publish", "PING", "--data", "@/nonexistent/data.json"], "--data: cannot read"),
    (["publish", "PING", "--ttl", "1x"], "argument --ttl: invalid duration '1x'"),
    (["publish", "PING", "--wait", "soon"], "argument --wait: invalid duration 'soon'"),
    (["publish", "PING", "--severity", "urgent"], "argument --severity: invalid choice"),
    (["publish", "PING", "--source", "Not Valid"], "invalid --source: String should match"),
    (["publish", "bad topic"], "invalid TYPE"),
    (["run", "nosuch:thing"], "cannot import 'nosuch': No module named 'nosuch'"),
    (["run", "tests.cli.app_agents:nothing"],
     "module 'tests.cli.app_agents' has no attribute 'nothing'"),
    (["run", "tests.cli.app_agents:not_an_agent"], "is a str, not an Agent or a list of Agents"),
    (["run", "tests.cli.app_agents"], "use module:attr"),
    (["run", "tests.cli.app_agents:risk", "--concurrency", "0"], "expected an integer >= 1"),
    (["tail", "--since", "yesterday"], "invalid --since 'yesterday'"),
    (["tail", "--last", "-1"], "argument --last: expected an integer >= 0"),
    (["--namespace", "bad ns", "agents"], "invalid namespace 'bad ns'"),
    (["--redis", "http://example.com", "agents"], "unsupported redis url"),
    (["--log-level", "loud", "agents"], "argument --log-level: invalid choice: 'loud'"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=lambda v: str(v)[:40])
def test_usage_errors_exit_2_with_one_line(
    offline_cli: CLI, args: list[str], message: str
) -> None:
    result = offline_cli(*args)
    line = one_error_line(result)
    assert result.returncode == 2, str(result)
    assert message in line


def test_run_of_a_missing_module_names_it_exactly(offline_cli: CLI) -> None:
    result = offline_cli("run", "nosuch:thing")
    assert result.returncode == 2
    assert result.stderr == "swarmbus: error: cannot import 'nosuch': No module named 'nosuch'\n"


@pytest.mark.parametrize("command", [["status", "01ABC"], ["tail", "--last", "3"],
                                     ["groups"]], ids=" ".join)
def test_unreachable_redis_exits_1_naming_the_address_not_the_password(
    offline_cli: CLI, command: list[str]
) -> None:
    port = free_port()
    result = offline_cli("--redis", f"redis://:hunter2@127.0.0.1:{port}/0", *command)
    line = one_error_line(result)
    assert result.returncode == 1
    assert f"cannot reach redis at redis://:***@127.0.0.1:{port}/0" in line
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", [["tail", "-f"], ["run", "tests.cli.app_agents:risk"],
                                     ["coordinator"]], ids=" ".join)
def test_services_wait_for_an_unreachable_redis_and_say_where(
    offline_cli: CLI, command: list[str]
) -> None:
    """Services started before Redis (systemd, k8s) keep trying, as Celery workers do:
    each try logs the address (never the password); a stop request ends them cleanly."""
    port = free_port()
    proc = offline_cli.spawn("--redis", f"redis://:hunter2@127.0.0.1:{port}/0", *command)
    line = proc.expect_err("connect_deferred", timeout=15)
    assert f"redis://:***@127.0.0.1:{port}/0" in line
    proc.expect_err("connect_deferred", timeout=15)  # and again: still trying
    assert proc.popen.poll() is None
    assert proc.stop(timeout=15) in (0, 130)
    assert "hunter2" not in "\n".join(proc.stderr)
    assert "Traceback" not in "\n".join(proc.stderr)


def test_debug_shows_the_traceback(offline_cli: CLI) -> None:
    port = free_port()
    result = offline_cli("--debug", "--redis", f"redis://127.0.0.1:{port}/0", "agents")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("swarmbus: error: cannot reach redis")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main()`` configures logging for the process; put the test process's back."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_demo_passes_settings_seconds_and_whether_redis_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, float, bool]] = []

    def fake_main(settings: swarmbus.Settings, *, seconds: float, use_redis: bool) -> int:
        calls.append((settings.redis_url, seconds, use_redis))
        return 3

    fake: Any = types.ModuleType("swarmbus.demo")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "swarmbus.demo", fake)
    monkeypatch.setenv("SWARMBUS_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["demo", "--seconds", "2"]) == 3
    assert main(["--redis", "redis://127.0.0.1:2/0", "demo"]) == 3
    assert calls == [("redis://127.0.0.1:1/0", 2.0, False), ("redis://127.0.0.1:2/0", 15.0, True)]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("250ms", 0.25), ("1.5s", 1.5), ("10m", 600.0), ("1h", 3600.0),
    ("2d", 172_800.0), (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "-1s", "1 h 2", "1e3", "99999999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


@pytest.mark.parametrize(("text", "value"), [
    ("10m", timedelta(minutes=10)),
    ("1712345678901-0", "1712345678901-0"),
    ("1712345678901", "1712345678901"),
    ("2024-04-05T12:00:00", datetime(2024, 4, 5, 12, tzinfo=UTC)),
    ("2024-04-05T12:00:00Z", datetime(2024, 4, 5, 12, tzinfo=UTC)),
    ("2024-04-05T14:00:00+02:00", datetime(2024, 4, 5, 12, tzinfo=UTC)),
])
def test_since(text: str, value: object) -> None:
    assert since(text) == value
