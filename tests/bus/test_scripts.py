"""The Lua scripts never ``unpack`` (or build a command from) a list that can grow.

Lua's ``unpack`` fails past ~8,000 values, and Redis does not roll back a script that
already wrote: a list sized by the caller must go through ``call_chunked`` (slices of at
most 1,000 values), and any other ``unpack`` must say, in a ``-- bounded:`` comment on the
line above, why its list is small.
"""

from __future__ import annotations

import re

import pytest

from swarmbus.bus import scripts
from swarmbus.bus.scripts import CHUNK_LIB, Script
from tests.support import eventually, running

ALL_SCRIPTS = [v for v in vars(scripts).values() if isinstance(v, Script)]
_BOUNDED = re.compile(r"--\s*bounded:\s*at most (\d[\d,]*) values")


def test_every_script_is_found() -> None:
    assert len(ALL_SCRIPTS) >= 18
    assert {s.name for s in ALL_SCRIPTS} >= {"publish", "deliver", "finish", "lease",
                                             "release", "replay", "janitor_topic"}


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda s: s.name)
def test_no_script_unpacks_an_unbounded_list(script: Script) -> None:
    body = script.source.replace(CHUNK_LIB, "")
    lines = body.splitlines()
    for number, line in enumerate(lines):
        if "unpack(" not in line:
            continue
        above = lines[number - 1] if number else ""
        match = _BOUNDED.search(above)
        assert match, f"{script.name}: unbounded unpack: {line.strip()!r}"
        assert int(match[1].replace(",", "")) < 7000, f"{script.name}: bound too high"


def test_the_chunked_helper_passes_at_most_a_thousand_values() -> None:
    assert "unpack(list, i, math.min(i + 999, n))" in CHUNK_LIB
    assert "for i = 1, n, 1000 do" in CHUNK_LIB


def test_the_check_above_does_catch_an_unbounded_unpack() -> None:
    bad = Script("bad", "redis.call('XCLAIM', KEYS[1], 'g', 'c', 0, unpack(ARGV))")
    with pytest.raises(AssertionError, match="unbounded unpack"):
        test_no_script_unpacks_an_unbounded_list(bad)


@pytest.mark.anyio
async def test_dead_lettering_an_entry_with_thousands_of_fields(make_bus) -> None:
    """The only bounded copy: FINISH copies at most 1,000 of a garbage entry's fields
    into its dead letter, and says how many it left out."""
    bus = await make_bus()
    stream = bus.keys.topic("JOB").stream

    async def never(*_: object) -> None:  # pragma: no cover - nothing valid arrives
        raise AssertionError("garbage reached a handler")

    async with running(bus.consumer("risk", {"JOB": never})):
        await bus.redis.xadd(stream, {f"f{i}": str(i) for i in range(5000)})

        async def dead_lettered() -> bool:
            return len(await bus.dead_letters("JOB")) == 1

        await eventually(dead_lettered, timeout=30)
    (letter,) = await bus.dead_letters("JOB")
    assert letter.error_type == "DecodeError" and letter.raw is not None
    kept = [k for k in letter.raw if k.startswith("f")]
    assert len(kept) == 1000
    ((_, fields),) = await bus.redis.xrange(bus.keys.topic("JOB").dlq)
    assert fields[b"dlq.fields_dropped"] == b"4000"
