"""Key layout: namespaces, cluster hash tags, and name validation."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmbus import ConfigurationError
from swarmbus.bus.keys import AgentKeys, Keys, TopicKeys, check_agent, check_topic
from swarmbus.bus.signal import AGENT_NAME, TOPIC_NAME, new_id

PROPERTY = settings(max_examples=200, deadline=None)

topics = st.from_regex(TOPIC_NAME, fullmatch=True)
agents = st.from_regex(AGENT_NAME, fullmatch=True)
namespaces = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes (its rules: first '{', then the next '}')."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def topic_key_set(keys: Keys, topic: str, signal_id: str) -> list[str]:
    t = keys.topic(topic)
    return [t.stream, t.dlq, t.subs, t.status(signal_id), t.status_prefix, t.fence]


def agent_key_set(keys: Keys, agent: str) -> list[str]:
    """Every key of one agent's memory, found by introspection of ``AgentKeys``."""
    a = keys.memory(agent)
    found = []
    for name in dir(a):
        if name.startswith("_") or name in {"agent", "prefix"}:
            continue
        value = getattr(a, name)
        if callable(value):
            value = value(*["x"] * len(inspect.signature(value).parameters))
        found.append(value)
    return found


@PROPERTY
@given(namespaces, agents)
def test_every_memory_key_of_an_agent_shares_one_hash_tag(namespace: str, agent: str) -> None:
    all_keys = agent_key_set(Keys(namespace), agent)
    assert {hash_tag(key) for key in all_keys} == {f"a:{agent}"}
    assert len(set(all_keys)) == len(all_keys) > 15


@PROPERTY
@given(namespaces, topics)
def test_every_key_of_a_topic_shares_one_hash_tag(namespace: str, topic: str) -> None:
    keys = Keys(namespace)
    all_keys = topic_key_set(keys, topic, new_id())
    assert {hash_tag(key) for key in all_keys} == {f"t:{topic}"}
    assert len(set(all_keys)) == len(all_keys)


def every_key(keys: Keys, topic: str) -> list[str]:
    """Every key (or key prefix/pattern) ``keys`` can build, found by introspection.

    Walks all public attributes so a key added to ``Keys`` later is covered too.
    """
    found: list[str] = []
    for name in dir(keys):
        if name.startswith("_") or name in {"namespace", "topic_of_stream", "agent_of_stm"}:
            continue
        value = getattr(keys, name)
        if callable(value):
            arity = len(inspect.signature(value).parameters)
            arg = {"topic": topic, "agent": "risk", "memory": "risk"}.get(name, "risk/host:1:abc")
            value = value(*[arg] * arity)
        if isinstance(value, TopicKeys):
            found += topic_key_set(keys, value.topic, "sig-1")
        elif isinstance(value, AgentKeys):
            found += agent_key_set(keys, value.agent)
        elif isinstance(value, str):
            found.append(value)
        else:
            raise AssertionError(f"Keys.{name} is neither a key nor a key builder: {value!r}")
    return found


@PROPERTY
@given(namespaces, topics)
def test_namespace_prefixes_every_key(namespace: str, topic: str) -> None:
    every = every_key(Keys(namespace), topic)
    assert len(every) >= 9  # topic keys, registry, heartbeats, agent prefix, stream pattern
    for key in every:
        assert key.startswith(f"{namespace}:"), key


def test_concrete_layout() -> None:
    keys = Keys("swarmbus")
    t = keys.topic("WHALE_ACTIVITY")
    assert t.topic == "WHALE_ACTIVITY"
    assert t.stream == "swarmbus:{t:WHALE_ACTIVITY}:stream"
    assert t.dlq == "swarmbus:{t:WHALE_ACTIVITY}:dlq"
    assert t.subs == "swarmbus:{t:WHALE_ACTIVITY}:subs"
    assert t.status("01ABC") == "swarmbus:{t:WHALE_ACTIVITY}:st:01ABC"
    assert keys.topics == "swarmbus:topics"
    assert keys.agent("risk-manager") == "swarmbus:{a:risk-manager}:"
    assert keys.stream_pattern() == "swarmbus:{t:*}:stream"


def test_namespaces_do_not_share_keys() -> None:
    a, b = Keys("fleet-a"), Keys("fleet-b")
    assert set(topic_key_set(a, "T", "s")).isdisjoint(topic_key_set(b, "T", "s"))
    assert a.agent("risk") != b.agent("risk")
    assert set(every_key(a, "T")).isdisjoint(every_key(b, "T"))


@PROPERTY
@given(topics, topics)
def test_different_topics_never_share_keys(first: str, second: str) -> None:
    keys = Keys("ns")
    same = first == second
    assert (keys.topic(first).stream == keys.topic(second).stream) == same
    assert (hash_tag(keys.topic(first).stream) == hash_tag(keys.topic(second).stream)) == same


@PROPERTY
@given(namespaces, agents)
def test_agent_prefix_uses_the_agent_hash_tag(namespace: str, agent: str) -> None:
    prefix = Keys(namespace).agent(agent)
    assert prefix == f"{namespace}:{{a:{agent}}}:"
    # Every key built under the prefix lands in the agent's slot.
    for suffix in ("decisions", "state", "patterns:x{y}"):
        assert hash_tag(prefix + suffix) == f"a:{agent}"


def test_agent_and_topic_tags_never_collide() -> None:
    keys = Keys("ns")
    assert hash_tag(keys.agent("risk")) != hash_tag(keys.topic("risk").stream)


@PROPERTY
@given(namespaces, topics)
def test_topic_of_stream_inverts_the_stream_key(namespace: str, topic: str) -> None:
    keys = Keys(namespace)
    t = keys.topic(topic)
    assert keys.topic_of_stream(t.stream) == topic
    assert keys.topic_of_stream(t.dlq) is None
    assert keys.topic_of_stream(t.subs) is None
    assert keys.topic_of_stream(t.status("x")) is None
    assert Keys(namespace + "x").topic_of_stream(t.stream) is None


@pytest.mark.parametrize(
    "key", ["", "ns:topics", "other:{t:A}:stream", "ns:{a:risk}:stream", "ns:{t:A}:streams"]
)
def test_topic_of_stream_rejects_other_keys(key: str) -> None:
    assert not Keys("ns").topic_of_stream(key)


@pytest.mark.parametrize("key", ["ns:{t:a b}:stream", "ns:{t:x}:dlq}:stream"])
def test_topic_of_stream_ignores_keys_with_invalid_topic_names(key: str) -> None:
    assert Keys("ns").topic_of_stream(key) is None


def test_topic_keys_are_cached_and_stable() -> None:
    keys = Keys("ns")
    assert keys.topic("A") is keys.topic("A")
    assert keys.topic("A") == Keys("ns").topic("A")


# -- validation ---------------------------------------------------------------------------

BAD_TOPICS = ["", "-x", "_x", "has space", "a{b", "a}b", "a/b", "é", "x" * 129, None, 5]
BAD_AGENTS = ["", "Risk", "-x", ".x", "a b", "a{b", "a:b", "x" * 65, None]


@pytest.mark.parametrize("topic", BAD_TOPICS)
def test_invalid_topic_raises_configuration_error(topic: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Keys("ns").topic(topic)  # type: ignore[arg-type]
    message = str(info.value)
    assert "invalid topic" in message
    assert repr(topic) in message
    assert "letter or digit" in message
    with pytest.raises(ConfigurationError):
        check_topic(topic)  # type: ignore[arg-type]


@pytest.mark.parametrize("agent", BAD_AGENTS)
def test_invalid_agent_raises_configuration_error(agent: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Keys("ns").agent(agent)  # type: ignore[arg-type]
    message = str(info.value)
    assert "invalid agent name" in message
    assert repr(agent) in message
    assert "lowercase" in message
    with pytest.raises(ConfigurationError):
        check_agent(agent)  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_topic("bad topic")


@pytest.mark.parametrize("topic", ["A", "WHALE_ACTIVITY", "a.b:c-d", "0", "X" * 128])
def test_valid_topics_pass(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize("agent", ["risk", "risk-manager", "r.1_x", "0", "a" * 64])
def test_valid_agents_pass(agent: str) -> None:
    assert check_agent(agent) == agent


@pytest.mark.parametrize("check, name", [(check_topic, "A\n"), (check_agent, "risk\n")])
def test_names_with_trailing_newline_are_refused(check: object, name: str) -> None:
    with pytest.raises(ConfigurationError):
        check(name)  # type: ignore[operator]
