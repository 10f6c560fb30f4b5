"""Help and usage errors of memory, coordinator, stats and backup: exit 2, one line."""

from __future__ import annotations

import pytest

from swarmbus.cli import main
from tests.cli.runner import CLI, one_error_line

COMMANDS = [
    ["memory"], ["memory", "decisions"], ["memory", "patterns"], ["memory", "stats"],
    ["memory", "state"], ["memory", "checkpoints"], ["memory", "rollback"], ["coordinator"],
    ["stats"], ["backup"], ["backup", "export"], ["backup", "import"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_new_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: swarmbus {' '.join(command)}")
    assert "examples:\n  swarmbus " in out
    description = out.split("\n\n")[1]
    assert "\n" not in description.strip() and description.strip().endswith(".")


def test_top_level_help_lists_the_new_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("coordinator", "memory", "stats", "backup"):
        assert f"\n    {name} " in out


USAGE_ERRORS = [
    (["memory"], "missing command: see 'swarmbus memory --help'"),
    (["backup"], "missing command: see 'swarmbus backup --help'"),
    (["memory", "decisions"], "the following arguments are required: --agent"),
    (["memory", "state", "--agent", "Not Valid"], "argument --agent: invalid agent name"),
    (["memory", "stats", "--agent", "risk", "--window", "soon"],
     "argument --window: invalid duration 'soon'"),
    (["stats", "--window", "0"], "argument --window: invalid duration '0': must be above zero"),
    (["memory", "decisions", "--agent", "risk", "--since", "yesterday"],
     "argument --since: invalid time 'yesterday'"),
    (["memory", "decisions", "--agent", "risk", "--success", "--failed"],
     "argument --failed: not allowed with argument --success"),
    (["memory", "decisions", "--agent", "risk", "--id", "risk~1", "--type", "X"],
     "--id picks decisions by id: --type cannot be combined with it"),
    (["memory", "decisions", "--agent", "risk", "--chain", "exec~1"],
     "decision 'exec~1' belongs to agent 'exec', not 'risk': use --agent exec"),
    (["memory", "patterns", "--agent", "risk", "--min-confidence", "1.5"],
     "argument --min-confidence: expected a number from 0 to 1, got '1.5'"),
    (["coordinator", "--analytics-every", "fast"],
     "argument --analytics-every: invalid duration 'fast'"),
    (["backup", "import"], "the following arguments are required: FILE"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=lambda v: str(v)[:50])
def test_usage_errors_exit_2_with_one_line(
    offline_cli: CLI, args: list[str], message: str
) -> None:
    result = offline_cli(*args)
    line = one_error_line(result)
    assert result.returncode == 2, str(result)
    assert message in line
