"""Every Redis key swarmbus uses is built here, and nowhere else.

Layout (``ns`` is ``Settings.namespace``)::

    ns:topics                      SET     topic names ever published or subscribed
    ns:{t:TOPIC}:stream            STREAM  the topic's signals; one consumer group per agent
    ns:{t:TOPIC}:dlq               STREAM  dead letters of the topic
    ns:{t:TOPIC}:subs              SET     agents subscribed to TOPIC (broadcast targets)
    ns:{t:TOPIC}:groups            SET     agents a consumer group was created for
    ns:{t:TOPIC}:st:SIGNAL_ID      HASH    per-target status of one signal
    ns:{t:TOPIC}:fence             STRING  highest janitor fencing token seen on the topic
    ns:{t:TOPIC}:bad               ZSET    "AGENT|ENTRY_ID" of entries without status that
                                           AGENT dead-lettered (by entry time): never twice
    ns:{t:TOPIC}:sweep             STRING  where the janitor's sweep past a long-lived
                                           entry resumes
    ns:heartbeats                  ZSET    "AGENT/CONSUMER" -> last heartbeat (ms)
    ns:heartbeat-records           HASH    "AGENT/CONSUMER" -> last heartbeat record (JSON)
    ns:coordinator:lease           STRING  "HOLDER|TOKEN", the periodic-jobs lease
    ns:coordinator:fence           STRING  fencing token counter
    ns:coordinator:anomaly-state   HASH    "AGENT|METRIC" -> detector state (JSON)
    ns:anomalies                   STREAM  detected anomalies
    ns:{a:AGENT}:stm               STREAM  decision and outcome events (the coordinator reads)
    ns:{a:AGENT}:dec:ID            HASH    one decision record (+ its outcome)
    ns:{a:AGENT}:decisions         ZSET    decision ids by creation time (ms)
    ns:{a:AGENT}:decisions:T:TYPE  ZSET    the same, per decision type
    ns:{a:AGENT}:children:ID       SET     ids of decisions whose parent is ID
    ns:{a:AGENT}:roll:m:MINUTE     HASH    per-minute rollups of decision statistics
    ns:{a:AGENT}:roll:h:HOUR       HASH    per-hour rollups of decision statistics
    ns:{a:AGENT}:state             HASH    current state: version, data, updated_at
    ns:{a:AGENT}:checkpoints       ZSET    checkpoint ids by sequence number
    ns:{a:AGENT}:checkpoint:ID     STRING  one checkpoint (JSON)
    ns:{a:AGENT}:pattern:ID        HASH    one learned pattern
    ns:{a:AGENT}:patterns          ZSET    pattern ids by confidence
    ns:{a:AGENT}:patterns:T:TYPE   ZSET    the same, per decision type
    ns:{a:AGENT}:pmatch:TYPE:HASH  ZSET    patterns of one (type, conditions) by confidence
    ns:{a:AGENT}:shared            ZSET    "OWNER~PATTERN" shared with this agent, by confidence
    ns:{a:AGENT}:applied           ZSET    STM events already folded into patterns
    ns:{a:AGENT}:profile           STRING  pattern features and bins (JSON)
    ns:{a:AGENT}:types             SET     decision types the agent ever recorded
    ns:{a:AGENT}:metrics           STREAM  per-heartbeat handler metrics of the agent

All keys of one topic share the hash tag ``{t:TOPIC}`` and all keys of one agent's
memory share ``{a:AGENT}``: every multi-key script stays inside one cluster slot.
Names are validated before they get here, and none may contain braces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigurationError
from .signal import AGENT_NAME, SIGNAL_ID, TOPIC_NAME

__all__ = ["AgentKeys", "Keys", "TopicKeys", "check_agent", "check_topic"]

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
    fence: str
    groups: str
    bad: str
    sweep: str

    def status(self, signal_id: str) -> str:
        return self.status_prefix + signal_id


@dataclass(frozen=True, slots=True)
class AgentKeys:
    """The memory keys of one agent, all in the slot of ``{a:AGENT}``."""

    agent: str
    prefix: str

    @property
    def stm(self) -> str:
        return self.prefix + "stm"

    def decision(self, decision_id: str) -> str:
        return f"{self.prefix}dec:{decision_id}"

    @property
    def decisions(self) -> str:
        return self.prefix + "decisions"

    def decisions_of_type(self, decision_type: str) -> str:
        return f"{self.prefix}decisions:T:{decision_type}"

    def children(self, decision_id: str) -> str:
        return f"{self.prefix}children:{decision_id}"

    def minute(self, minute: int) -> str:
        return f"{self.prefix}roll:m:{minute}"

    def hour(self, hour: int) -> str:
        return f"{self.prefix}roll:h:{hour}"

    @property
    def state(self) -> str:
        return self.prefix + "state"

    @property
    def checkpoints(self) -> str:
        return self.prefix + "checkpoints"

    def checkpoint(self, checkpoint_id: str) -> str:
        return f"{self.prefix}checkpoint:{checkpoint_id}"

    def pattern(self, pattern_id: str) -> str:
        return f"{self.prefix}pattern:{pattern_id}"

    @property
    def patterns(self) -> str:
        return self.prefix + "patterns"

    def patterns_of_type(self, decision_type: str) -> str:
        return f"{self.prefix}patterns:T:{decision_type}"

    def pattern_match(self, decision_type: str, conditions_hash: str) -> str:
        return f"{self.prefix}pmatch:{decision_type}:{conditions_hash}"

    @property
    def shared(self) -> str:
        return self.prefix + "shared"

    @property
    def applied(self) -> str:
        return self.prefix + "applied"

    @property
    def profile(self) -> str:
        return self.prefix + "profile"

    @property
    def types(self) -> str:
        return self.prefix + "types"

    @property
    def metrics(self) -> str:
        return self.prefix + "metrics"


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("_agents", "_topics", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._topics: dict[str, TopicKeys] = {}
        self._agents: dict[str, AgentKeys] = {}

    def memory(self, agent: str) -> AgentKeys:
        cached = self._agents.get(agent)
        if cached is None:
            cached = AgentKeys(agent, self.agent(agent))
            self._agents[agent] = cached
        return cached

    def topic(self, topic: str) -> TopicKeys:
        cached = self._topics.get(topic)
        if cached is None:
            check_topic(topic)
            base = f"{self.namespace}:{{t:{topic}}}:"
            cached = TopicKeys(topic, base + "stream", base + "dlq", base + "subs", base + "st:",
                               base + "fence", base + "groups", base + "bad", base + "sweep")
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

    @property
    def lease(self) -> str:
        return f"{self.namespace}:coordinator:lease"

    @property
    def fence(self) -> str:
        return f"{self.namespace}:coordinator:fence"

    @property
    def anomaly_state(self) -> str:
        return f"{self.namespace}:coordinator:anomaly-state"

    @property
    def anomalies(self) -> str:
        return f"{self.namespace}:anomalies"

    def memory_pattern(self) -> str:
        """SCAN pattern matching every agent's STM stream of the namespace."""
        return f"{self.namespace}:{{a:*}}:stm"

    def agent_of_stm(self, key: str) -> str | None:
        prefix = f"{self.namespace}:{{a:"
        if key.startswith(prefix) and key.endswith("}:stm"):
            agent = key[len(prefix) : -len("}:stm")]
            if _AGENT.fullmatch(agent):
                return agent
        return None

    def agent(self, agent: str) -> str:
        """Prefix of every key of one agent's memory (hash tag ``{a:AGENT}``)."""
        check_agent(agent)
        return f"{self.namespace}:{{a:{agent}}}:"
