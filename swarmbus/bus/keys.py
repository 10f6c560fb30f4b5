"""Every Redis key swarmbus uses is built here, and nowhere else.

Layout (``ns`` is ``Settings.namespace``)::

    ns:topics                      SET     topic names ever published or subscribed
    ns:{t:TOPIC}:stream            STREAM  the topic's signals; one consumer group per agent
    ns:{t:TOPIC}:dlq               STREAM  dead letters of the topic
    ns:{t:TOPIC}:subs              SET     agents subscribed to TOPIC (broadcast targets)
    ns:{t:TOPIC}:st:SIGNAL_ID      HASH    per-target status of one signal
    ns:heartbeats                  ZSET    "AGENT/CONSUMER" -> last heartbeat (ms)
    ns:heartbeat-records           HASH    "AGENT/CONSUMER" -> last heartbeat record (JSON)
    ns:{a:AGENT}:...               agent memory (decisions, state, patterns)

All keys of one topic share the hash tag ``{t:TOPIC}`` and all keys of one agent's
memory share ``{a:AGENT}``: every multi-key script stays inside one cluster slot.
Names are validated before they get here, and none may contain braces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigurationError
from .signal import AGENT_NAME, SIGNAL_ID, TOPIC_NAME

__all__ = ["Keys", "TopicKeys", "check_agent", "check_topic"]

_TOPIC = re.compile(TOPIC_NAME)
_AGENT = re.compile(AGENT_NAME)
_SIGNAL = re.compile(SIGNAL_ID)


def check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        raise ConfigurationError(
            f"invalid topic {topic!r}: start with a letter or digit, then up to 127 of "
            "letters, digits, '_', '.', ':' or '-'"
        )
    return topic


def check_agent(agent: str) -> str:
    if not isinstance(agent, str) or not _AGENT.fullmatch(agent):
        raise ConfigurationError(
            f"invalid agent name {agent!r}: start with a lowercase letter or digit, then up "
            "to 63 of lowercase letters, digits, '.', '_' or '-'"
        )
    return agent


def check_signal_id(signal_id: str) -> str:
    if not isinstance(signal_id, str) or not _SIGNAL.fullmatch(signal_id):
        raise ConfigurationError(f"invalid signal id {signal_id!r}")
    return signal_id


@dataclass(frozen=True, slots=True)
class TopicKeys:
    """The keys of one topic, all in the slot of ``{t:TOPIC}``."""

    topic: str
    stream: str
    dlq: str
    subs: str
    status_prefix: str

    def status(self, signal_id: str) -> str:
        return self.status_prefix + signal_id


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("_topics", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._topics: dict[str, TopicKeys] = {}

    def topic(self, topic: str) -> TopicKeys:
        cached = self._topics.get(topic)
        if cached is None:
            check_topic(topic)
            base = f"{self.namespace}:{{t:{topic}}}:"
            cached = TopicKeys(topic, base + "stream", base + "dlq", base + "subs", base + "st:")
            self._topics[topic] = cached
        return cached

    @property
    def topics(self) -> str:
        return f"{self.namespace}:topics"

    def stream_pattern(self) -> str:
        """SCAN pattern matching every topic stream of the namespace."""
        return f"{self.namespace}:{{t:*}}:stream"

    def topic_of_stream(self, key: str) -> str | None:
        prefix = f"{self.namespace}:{{t:"
        if key.startswith(prefix) and key.endswith("}:stream"):
            topic = key[len(prefix) : -len("}:stream")]
            if _TOPIC.fullmatch(topic):
                return topic
        return None

    @property
    def heartbeats(self) -> str:
        return f"{self.namespace}:heartbeats"

    @property
    def heartbeat_records(self) -> str:
        return f"{self.namespace}:heartbeat-records"

    def agent(self, agent: str) -> str:
        """Prefix of every key of one agent's memory (hash tag ``{a:AGENT}``)."""
        check_agent(agent)
        return f"{self.namespace}:{{a:{agent}}}:"
