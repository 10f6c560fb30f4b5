"""``swarmbus demo`` runs the whole fleet and a coordinator with no Redis anywhere."""

from __future__ import annotations

import pytest

from swarmbus.testing import free_port
from tests.cli.runner import CLI, cli_env


@pytest.mark.slow
def test_demo_runs_on_the_embedded_backend_with_no_redis_reachable() -> None:
    # The default URL points at a port where nothing listens: the demo must not need it.
    cli = CLI(cli_env(f"redis://127.0.0.1:{free_port()}/0", "demo-test"), "demo-test")
    result = cli("demo", "--seconds", "4", timeout=60)
    assert result.returncode == 0, str(result)
    out = result.stdout
    assert "embedded backend" in out
    assert "swarmbus demo summary" in out
    for agent in ("market-hunter", "risk-manager", "trade-executor"):
        assert agent in out
    for topic in ("MARKET_TICK", "WHALE_ACTIVITY", "RISK_ALERT"):
        assert topic in out
    assert "patterns learned" in out and "choosing [" in out  # the coordinator learned
    assert "Traceback" not in result.stderr
