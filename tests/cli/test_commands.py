"""Every command against the private redis-server, as a user runs it (one process each)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis

from swarmbus import StatusState
from swarmbus.bus.keys import Keys
from tests.cli.runner import CLI, one_error_line, wait_until

pytestmark = pytest.mark.redis

StateOf = Callable[[str, str], dict[str, StatusState]]


def publish(cli: CLI, *args: str) -> str:
    result = cli.ok("publish", *args)
    assert len(result.lines) == 1, str(result)
    return result.lines[0]


def test_publish_run_status(cli: CLI, state_of: StateOf) -> None:
    first = publish(cli, "PING", "--to", "risk", "--data", '{"n": 1}')
    assert state_of("PING", first) == {"risk": StatusState.pending}
    pending = cli.ok("status", first, "--json").json_lines()
    assert [s["targets"]["risk"]["state"] for s in pending] == ["pending"]

    worker = cli.worker()
    worker.expect_out(f"done {first}")
    waited = cli.ok("publish", "PING", "--to", "risk", "--data", '{"n": 2}', "--wait", "10")
    second = waited.lines[0]
    assert waited.lines[1].startswith(f"signal {second}  type PING")
    assert waited.lines[2].split()[:3] == ["TARGET", "STATE", "ATTEMPTS"]
    assert waited.lines[3].split()[:3] == ["risk", "processed", "1"]
    assert worker.stop(signal.SIGINT) == 0
    assert not any("Traceback" in line for line in worker.stderr)

    human = cli.ok("status", first)
    assert human.lines[0].startswith(f"signal {first}  type PING  entry ")
    row = human.lines[2].split()
    assert row[:3] == ["risk", "processed", "1"] and row[-1].count(":") == 2  # consumer name
    [status] = cli.ok("status", first, "--json").json_lines()
    assert status["signal_id"] == first and status["type"] == "PING"
    assert status["targets"]["risk"]["state"] == "processed"
    assert status["targets"]["risk"]["consumer"] == row[-1]


def test_status_of_an_unknown_signal_exits_1(cli: CLI) -> None:
    result = cli("status", "01NEVERPUBLISHED")
    assert result.returncode == 1
    assert "unknown signal '01NEVERPUBLISHED'" in one_error_line(result)


def test_invalid_topic_is_a_usage_error(cli: CLI) -> None:
    result = cli("tail", "no spaces allowed")
    assert result.returncode == 2
    assert "invalid topic 'no spaces allowed'" in one_error_line(result)


def test_publish_wait_timeout_prints_the_status_and_exits_1(cli: CLI) -> None:
    result = cli("publish", "PING", "--to", "nobody-runs-this", "--wait", "300ms")
    assert result.returncode == 1
    assert result.lines[3].split()[:2] == ["nobody-runs-this", "pending"]
    assert "not finished after 0.3 s" in result.error_line()


def test_publish_data_from_file_and_stdin_with_ttl(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"from": "file", "nested": {"x": [1, 2]}}')
    from_file = publish(cli, "PING", "--data", f"@{path}", "--ttl", "1h", "--severity", "high")
    from_stdin = cli.ok("publish", "PING", "--data", "-", input='{"from": "stdin"}').lines[0]
    signals = {s["id"]: s for s in cli.ok("tail", "PING", "--json").json_lines()}
    assert signals[from_file]["data"] == {"from": "file", "nested": {"x": [1, 2]}}
    assert signals[from_file]["severity"] == "high"
    lifetime = (datetime.fromisoformat(signals[from_file]["expires_at"])
                - datetime.fromisoformat(signals[from_file]["created_at"]))
    assert lifetime == timedelta(hours=1)
    assert signals[from_stdin]["data"] == {"from": "stdin"}
    assert signals[from_stdin]["source"] == "cli" and signals[from_stdin]["targets"] == []


def test_tail_last_json_human_and_filters(cli: CLI) -> None:
    ids = [
        publish(cli, "PING", "--source", "alpha", "--to", "x", "--data", '{"n": 1}'),
        publish(cli, "PING", "--source", "beta", "--to", "y", "--data", '{"n": 2}',
                "--severity", "critical"),
        publish(cli, "PING", "--source", "alpha", "--to", "x,y", "--data", '{"n": 3}'),
        publish(cli, "OTHER", "--source", "gamma", "--data", '{"long": "' + "z" * 200 + '"}'),
    ]
    last_two = cli.ok("tail", "--last", "2", "--json").json_lines()
    assert [s["id"] for s in last_two] == ids[2:]
    last_ping = cli.ok("tail", "PING", "--last", "2", "--json").json_lines()
    assert [s["id"] for s in last_ping] == ids[1:3]
    assert last_ping[0]["source"] == "beta" and last_ping[0]["targets"] == ["y"]
    assert last_ping[0]["data"] == {"n": 2} and last_ping[0]["severity"] == "critical"

    human = cli.ok("tail", "--last", "2").lines
    assert len(human) == 2
    assert human[0].split()[1:5] == ["PING", "alpha", "->", "x,y"]
    assert human[0].endswith('medium    {"n":3}')
    assert human[1].split()[1:5] == ["OTHER", "gamma", "->", "*"]  # broadcast
    assert human[1].endswith("…") and len(human[1].split("  ")[-1]) == 80
    assert "\x1b[" not in "".join(human)  # no colour in a pipe

    def tail_ids(*args: str) -> list[str]:
        return [s["id"] for s in cli.ok("tail", *args, "--json").json_lines()]

    assert tail_ids("--source", "alpha") == [ids[0], ids[2]]
    assert tail_ids("--target", "y") == [ids[1], ids[2]]
    assert tail_ids("PING", "--source", "alpha", "--target", "y") == [ids[2]]
    assert tail_ids("P*") == ids[:3]
    assert tail_ids("--since", "1h") == ids
    assert tail_ids("--since", (datetime.now() + timedelta(days=1)).isoformat()) == []
    [entry_id] = [s["entry_id"] for s in cli.ok("status", ids[3], "--json").json_lines()]
    assert tail_ids("--since", entry_id) == ids[3:]


def test_tail_follow_shows_new_signals(cli: CLI) -> None:
    tail = cli.spawn("tail", "PING", "-f", "--source", "cli", "--json")
    published: list[str] = []
    # Keep publishing until the follower shows one: then it is certainly following.
    for _ in range(40):
        published.append(publish(cli, "PING", "--data", '{"probe": true}'))
        try:
            first = json.loads(tail.expect_out(timeout=0.5))
            break
        except AssertionError:
            continue
    else:
        pytest.fail(f"tail -f showed nothing; stderr: {tail.stderr}")
    assert first["id"] in published
    publish(cli, "PING", "--source", "noise")  # filtered out by --source cli
    last = publish(cli, "PING", "--data", '{"last": true}')
    while (line := json.loads(tail.expect_out(timeout=10)))["id"] != last:
        assert line["id"] in published and line["source"] == "cli"
    assert line["data"] == {"last": True}
    assert tail.stop(signal.SIGINT) == 130
    assert tail.stderr == []


def test_agents_and_groups(cli: CLI) -> None:
    publish(cli, "PING", "--to", "ghost")
    worker = cli.worker()
    [beat] = cli.ok("agents", "--json").json_lines()
    assert beat["agent"] == "risk" and beat["alive"] is True
    assert beat["pid"] == worker.popen.pid and beat["version"] == "1.2.3"
    assert beat["topics"] == ["DOOMED", "PING"]
    human = cli.ok("agents").lines
    assert human[0].split()[:3] == ["AGENT", "CONSUMER", "STATE"]
    assert human[1].split()[0] == "risk" and human[1].split()[2] == "alive"

    groups = {(g["topic"], g["agent"]): g for g in cli.ok("groups", "--json").json_lines()}
    assert set(groups) == {("PING", "risk"), ("DOOMED", "risk"), ("PING", "ghost")}
    assert groups["PING", "risk"]["consumers"] == 1
    assert groups["PING", "risk"]["consumer_names"] == [beat["consumer"]]
    assert groups["PING", "ghost"]["consumers"] == 0 and groups["PING", "ghost"]["lag"] == 1
    only = cli.ok("groups", "DOOMED", "--json").json_lines()
    assert [(g["topic"], g["agent"]) for g in only] == [("DOOMED", "risk")]
    table = cli.ok("groups", "PING").lines
    assert table[0].split()[:4] == ["TOPIC", "AGENT", "CONSUMERS", "PENDING"]
    assert sorted(line.split()[1] for line in table[1:]) == ["ghost", "risk"]

    assert worker.stop(signal.SIGTERM) == 0
    gone = cli.ok("agents", "--json")
    assert gone.stdout == ""  # a worker that stopped cleanly deregisters
    assert "no consumers seen" in cli.ok("agents").stderr


def test_dlq_list_show_replay_purge(
    cli: CLI, rclient: redis.Redis, state_of: StateOf
) -> None:
    dlq_key = Keys(cli.namespace).topic("DOOMED").dlq
    worker = cli.worker()
    ids = [publish(cli, "DOOMED", "--to", "risk", "--data", f'{{"why": "n{i}"}}')
           for i in range(2)]
    rclient.xadd(Keys(cli.namespace).topic("DOOMED").stream, {"garbage": "yes"})
    failed = cli("publish", "DOOMED", "--to", "risk", "--wait", "10")
    assert failed.returncode == 1
    assert failed.lines[3].split()[:2] == ["risk", "failed"]
    assert failed.error_line().endswith("not processed by every target: risk failed")
    ids.append(failed.lines[0])
    wait_until(lambda: rclient.xlen(dlq_key) == 4)
    assert worker.stop(signal.SIGTERM) == 0

    letters = cli.ok("dlq", "list", "DOOMED", "--json").json_lines()
    assert sorted(dl["signal"]["id"] for dl in letters if dl["signal"]) == sorted(ids)
    [garbage] = [dl for dl in letters if dl["signal"] is None]
    assert garbage["raw"] == {"garbage": "yes"} and garbage["error_type"] == "DecodeError"
    human = cli.ok("dlq", "list", "DOOMED").lines
    assert len(human) == 5 and human[0].split()[:2] == ["ID", "SIGNAL"]
    assert "refusing n0" in "\n".join(human) and "(undecodable entry)" in "\n".join(human)
    assert len(cli.ok("dlq", "list", "DOOMED", "--limit", "2", "--json").lines) == 2

    first = next(dl for dl in letters if dl["signal"] and dl["signal"]["id"] == ids[0])
    shown = cli.ok("dlq", "show", "DOOMED", first["id"]).stdout
    assert "error type: Reject" in shown and "refusing n0" in shown and ids[0] in shown
    [by_signal] = cli.ok("dlq", "show", "DOOMED", ids[0], "--json").json_lines()
    assert by_signal == first
    missing = cli("dlq", "show", "DOOMED", "1-1")
    assert missing.returncode == 1 and "no dead letter '1-1'" in one_error_line(missing)

    assert state_of("DOOMED", ids[0]) == {"risk": StatusState.failed}
    assert cli.ok("dlq", "replay", "DOOMED", first["id"]).lines == [
        "replayed 1 dead letter of DOOMED"]
    assert state_of("DOOMED", ids[0]) == {"risk": StatusState.pending}
    assert cli.ok("dlq", "replay", "DOOMED").lines == ["replayed 2 dead letters of DOOMED"]
    [left] = cli.ok("dlq", "list", "DOOMED", "--json").json_lines()
    assert left["raw"] == {"garbage": "yes"}  # nothing to deliver: it stays

    assert cli.ok("dlq", "purge", "DOOMED").lines == ["purged 1 dead letter of DOOMED"]
    assert cli.ok("dlq", "list", "DOOMED", "--json").stdout == ""
    assert "no dead letters on DOOMED" in cli.ok("dlq", "list", "DOOMED").stderr
