"""The versioned envelope: round trips, size limits, and surviving any garbage in a stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from swarmbus.bus.codec import decode, encode, entry_signal_id
from swarmbus.bus.signal import AGENT_NAME, SIGNAL_ID, TOPIC_NAME, Severity, Signal
from swarmbus.errors import DecodeError, InvalidSignal, PayloadTooLarge, SwarmbusError

LIMIT = 1_048_576
FIELDS = {b"v", b"i", b"d"}

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _full(pattern: str) -> st.SearchStrategy[str]:
    # fullmatch=True: a bare `$` would otherwise let hypothesis add a trailing newline.
    return st.from_regex(pattern, fullmatch=True)


topics = _full(TOPIC_NAME)
agents = _full(AGENT_NAME)
signal_ids = _full(SIGNAL_ID)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)

offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
).map(timezone)
# Kept two years inside datetime's range: the conversion to UTC of a value at the very edge
# overflows (see test_decode_datetime_at_range_edge_is_a_decode_error).
datetimes = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 1, 1),
    timezones=st.none() | st.just(UTC) | offsets,
)


@st.composite
def signals(draw: st.DrawFn) -> Signal:
    kwargs: dict[str, Any] = {
        "type": draw(topics),
        "source": draw(agents),
        "targets": draw(st.lists(agents, max_size=4)),
        "data": draw(json_objects),
        "severity": draw(st.sampled_from(Severity)),
        "confidence": draw(st.none() | st.floats(min_value=0.0, max_value=1.0)),
        "context": draw(json_objects),
        "recommended_action": draw(st.none() | st.text(max_size=30)),
        "causation_id": draw(st.none() | st.text(max_size=30)),
        "correlation_id": draw(st.none() | st.text(max_size=30)),
        "headers": draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)),
    }
    if draw(st.booleans()):
        kwargs["id"] = draw(signal_ids)
    if draw(st.booleans()):
        kwargs["created_at"] = draw(datetimes)
    if draw(st.booleans()):
        kwargs["expires_at"] = draw(datetimes)
    return Signal(**kwargs)


def _entry(body: Any, *, signal_id: bytes = b"01HZX3J6M6Q8S3V2W1Y0ABCDEF") -> dict[bytes, bytes]:
    # stdlib json, not orjson: garbage may hold ints orjson refuses to write.
    return {b"v": b"1", b"i": signal_id, b"d": json.dumps(body).encode()}


def _decode_error(fields: dict[bytes, bytes], max_bytes: int = LIMIT) -> DecodeError:
    """Decode garbage; anything but a DecodeError with a readable reason fails the test."""
    try:
        decode(fields, max_bytes)
    except DecodeError as exc:
        assert isinstance(exc.reason, str)
        assert exc.reason.strip(), "DecodeError.reason is empty"
        assert str(exc) == exc.reason
        return exc
    pytest.fail(f"decode() accepted garbage: {fields!r}")


# -- (a) round trip -----------------------------------------------------------------------


@PROPERTY
@given(signals())
def test_round_trip_gives_an_equal_signal(signal: Signal) -> None:
    fields = encode(signal, LIMIT)
    decoded = decode(fields, LIMIT)
    assert decoded == signal
    # Equality of aware datetimes ignores the zone: also check they come back as UTC.
    assert decoded.created_at.utcoffset() == timedelta(0)
    if decoded.expires_at is not None:
        assert decoded.expires_at.utcoffset() == timedelta(0)


@settings(max_examples=50, deadline=None)
@given(signals())
def test_envelope_layout_is_version_id_and_data(signal: Signal) -> None:
    fields = encode(signal, LIMIT)
    assert set(fields) == FIELDS
    assert all(isinstance(value, bytes) for value in fields.values())
    assert fields[b"v"] == b"1"
    assert fields[b"i"] == signal.id.encode()
    assert entry_signal_id(fields) == signal.id
    body = orjson.loads(fields[b"d"])
    assert isinstance(body, dict)
    assert body["id"] == signal.id  # also in 'i', where Lua scripts can read it
    assert body["type"] == signal.type
    assert body["source"] == signal.source


def test_the_i_field_wins_over_an_id_inside_d() -> None:
    signal = Signal(type="A", source="a")
    fields = encode(signal, LIMIT)
    fields[b"i"] = b"other-id"
    assert decode(fields, LIMIT).id == "other-id"  # the id the status is keyed by


def test_round_trip_of_a_typical_signal() -> None:
    signal = Signal(
        type="WHALE_ACTIVITY",
        source="whale-watcher",
        targets=["risk-manager", "trade-executor"],
        data={"amount": 1_250_000.5, "asset": "BTC", "wallets": ["a", "b"], "nested": {"x": [1]}},
        severity=Severity.high,
        confidence=0.87,
        context={"market": {"trend": "up", "volatility": "high"}, "cycle": 42},
        recommended_action="MONITOR_CLOSELY",
        created_at=datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        causation_id="cause-1",
        correlation_id="conv-7",
        headers={"traceparent": "00-abc-def-01"},
    ).with_ttl(timedelta(minutes=5))
    decoded = decode(encode(signal, LIMIT), LIMIT)
    assert decoded == signal
    assert decoded.created_at == datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert decoded.expires_at == datetime(2024, 5, 1, 10, 35, tzinfo=UTC)
    assert decoded.severity is Severity.high


def test_decode_ignores_an_id_inside_d_and_uses_i() -> None:
    fields = _entry({"type": "A", "source": "a", "id": "forged"}, signal_id=b"real-id")
    assert decode(fields, LIMIT).id == "real-id"


# -- (b) garbage never raises anything but DecodeError ------------------------------------

SIGNAL_FIELDS = sorted(Signal.model_fields)

# Values of the wrong shape for (almost) every field: ints as datetimes, objects as strings...
wrong_values = json_values | st.sampled_from(
    [
        "",
        "not a date",
        "2024-13-45T99:99:99Z",
        -1,
        2.5,
        10**30,
        -(10**30),
        {"nested": {}},
        ["x", 1],
        "UPPER-CASE",
        "bad name",
        "has{brace}",
        "x" * 300,
    ]
)


@st.composite
def bad_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["type"] = draw(topics)
    if draw(st.booleans()):
        body["source"] = draw(agents)
    for name in draw(st.lists(st.sampled_from([*SIGNAL_FIELDS, "extra", "v"]), min_size=1)):
        body[name] = draw(wrong_values)
    return body


@st.composite
def garbage_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    kind = draw(
        st.sampled_from(
            [
                "random",
                "wrong_version",
                "no_id",
                "bad_id",
                "no_data",
                "data_not_json",
                "data_not_object",
                "data_bad_fields",
                "oversize",
            ]
        )
    )
    raw = st.binary(max_size=40)
    if kind == "random":
        fields = draw(st.dictionaries(raw, raw, max_size=6))
        if fields.get(b"v") == b"1":
            fields[b"d"] = b"[]"  # keep it garbage
        return fields
    good = _entry({"type": "A", "source": "a"})
    if kind == "wrong_version":
        good[b"v"] = draw(raw.filter(lambda v: v != b"1"))
    elif kind == "no_id":
        del good[b"i"]
    elif kind == "bad_id":
        good[b"i"] = draw(
            st.just(b"")
            | st.binary(min_size=129, max_size=200)
            | st.binary(min_size=1, max_size=40).filter(
                lambda b: not b.isascii() or not b[:1].isalnum() or b"\n" in b or b" " in b
            )
        )
    elif kind == "no_data":
        del good[b"d"]
    elif kind == "data_not_json":
        good[b"d"] = draw(
            st.binary(max_size=60).filter(lambda b: not _is_json(b))
            | st.sampled_from([b"", b"{", b"{'a': 1}", b"NaN", b"\xff\xfe", b'{"a":1}x'])
        )
    elif kind == "data_not_object":
        good[b"d"] = json.dumps(draw(json_scalars | st.lists(json_values, max_size=3))).encode()
    elif kind == "data_bad_fields":
        good[b"d"] = json.dumps(draw(bad_bodies())).encode()
    elif kind == "oversize":
        good[b"d"] = orjson.dumps(
            {"type": "A", "source": "a", "data": {"blob": "x" * draw(st.integers(300, 3000))}}
        )
        return {**good, b"max": str(draw(st.integers(1, 299))).encode()}
    # Extra junk fields never rescue garbage and must not confuse the decoder.
    extra = draw(st.dictionaries(st.binary(min_size=2, max_size=8), raw, max_size=2))
    return {**extra, **good}


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


@PROPERTY
@given(garbage_entries())
def test_decode_raises_only_decode_error_on_garbage(fields: dict[bytes, bytes]) -> None:
    max_bytes = int(fields.pop(b"max", str(LIMIT).encode()))
    try:
        signal = decode(fields, max_bytes)
    except DecodeError as exc:
        assert isinstance(exc, InvalidSignal)
        assert isinstance(exc, SwarmbusError)
        assert isinstance(exc.reason, str)
        assert exc.reason.strip()
    else:
        # Only possible when the garbage happens to be a valid signal after all.
        body = orjson.loads(fields[b"d"])
        assert fields[b"v"] == b"1"
        assert signal.id == fields[b"i"].decode()
        assert signal.type == body["type"]


@PROPERTY
@given(st.dictionaries(st.binary(max_size=30), st.binary(max_size=300), max_size=8))
def test_decode_of_random_field_maps_raises_only_decode_error(fields: dict[bytes, bytes]) -> None:
    try:
        decode(fields, LIMIT)
    except DecodeError as exc:
        assert exc.reason.strip()
    else:
        # A random map is accepted only if it really is a version-1 envelope.
        assert fields[b"v"] == b"1"


@PROPERTY
@given(bad_bodies())
def test_decode_of_objects_with_wrong_field_types_raises_decode_error(body: dict[str, Any]) -> None:
    fields = _entry(body)
    try:  # the envelope's 'i' stands in for a missing id; a present one must be valid
        Signal.model_validate({"id": "01HZX3J6M6Q8S3V2W1Y0ABCDEF", **body})
    except ValidationError:
        _decode_error(fields)
    else:  # the drawn values happened to be valid
        assert decode(fields, LIMIT).type == body["type"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("created_at", "0001-01-01T00:00:00+01:00"),
        ("expires_at", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_decode_datetime_at_range_edge_is_a_decode_error(field: str, value: str) -> None:
    exc = _decode_error(_entry({"type": "A", "source": "a", field: value}))
    assert field in exc.reason


# -- (c) payload limit --------------------------------------------------------------------


@PROPERTY
@given(signals())
def test_encode_enforces_max_bytes_exactly(signal: Signal) -> None:
    fields = encode(signal, LIMIT)
    size = len(fields[b"d"])  # the encoded signal, id included
    assert encode(signal, size) == fields  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge) as info:
        encode(signal, size - 1)
    assert info.value.size == size
    assert info.value.limit == size - 1


def test_payload_too_large_is_a_swarmbus_error_with_size_and_limit() -> None:
    signal = Signal(type="BIG", source="producer", data={"blob": "x" * 5000})
    with pytest.raises(PayloadTooLarge) as info:
        encode(signal, 1024)
    exc = info.value
    assert isinstance(exc, SwarmbusError)
    assert isinstance(exc, InvalidSignal)
    assert exc.limit == 1024
    assert exc.size > 5000
    assert str(exc.size) in str(exc)
    assert "1024" in str(exc)


def test_decode_refuses_data_over_max_bytes() -> None:
    fields = _entry({"type": "A", "source": "a", "data": {"blob": "x" * 500}})
    exc = _decode_error(fields, max_bytes=100)
    assert "100" in exc.reason
    assert str(len(fields[b"d"])) in exc.reason
    assert decode(fields, len(fields[b"d"])).type == "A"  # at the limit it is accepted


def test_integers_past_64_bits_round_trip_exactly() -> None:
    signal = Signal(type="A", source="a", data={"n": 2**64, "m": -(2**70)})
    assert decode(encode(signal, LIMIT), LIMIT) == signal


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_in_data_are_refused_not_silently_nulled(value: float) -> None:
    with pytest.raises((ValidationError, InvalidSignal)):
        encode(Signal(type="A", source="a", data={"x": value}), LIMIT)


# -- (d) readable reasons -----------------------------------------------------------------


def test_reason_for_entry_without_v_mentions_v_and_lists_fields() -> None:
    exc = _decode_error({b"foo": b"bar", b"d": b"{}"})
    assert "'v'" in exc.reason
    assert "foo" in exc.reason


def test_reason_for_empty_entry_mentions_v() -> None:
    assert "'v'" in _decode_error({}).reason


def test_reason_for_unknown_version_names_the_version() -> None:
    good = _entry({"type": "A", "source": "a"})
    exc = _decode_error({**good, b"v": b"2"})
    assert "version" in exc.reason
    assert "'2'" in exc.reason


def test_reason_for_binary_version_is_printable() -> None:
    exc = _decode_error({b"v": b"\xff\x00" * 100, b"i": b"x", b"d": b"{}"})
    assert "version" in exc.reason
    assert exc.reason.isprintable()
    assert len(exc.reason) < 400


@pytest.mark.parametrize("signal_id", [None, b"", b"x" * 129, b"\xc3\xa9t\xc3\xa9"])
def test_reason_for_missing_or_unusable_id_mentions_i(signal_id: bytes | None) -> None:
    fields = _entry({"type": "A", "source": "a"})
    if signal_id is None:
        del fields[b"i"]
    else:
        fields[b"i"] = signal_id
    assert "'i'" in _decode_error(fields).reason


def test_reason_for_id_with_invalid_characters_names_the_id_field() -> None:
    exc = _decode_error(_entry({"type": "A", "source": "a"}, signal_id=b"has space"))
    assert "id" in exc.reason


def test_reason_for_missing_data_mentions_d() -> None:
    fields = _entry({})
    del fields[b"d"]
    assert "'d'" in _decode_error(fields).reason


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"{'a': 1}"])
def test_reason_for_data_that_is_not_json(raw: bytes) -> None:
    exc = _decode_error({b"v": b"1", b"i": b"abc", b"d": raw})
    assert "'d'" in exc.reason
    assert "JSON" in exc.reason


@pytest.mark.parametrize(
    "body, kind", [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")]
)
def test_reason_for_data_that_is_not_an_object_names_its_type(body: Any, kind: str) -> None:
    exc = _decode_error(_entry(body))
    assert "object" in exc.reason
    assert kind in exc.reason


@pytest.mark.parametrize(
    "body, field",
    [
        ({"source": "a"}, "type"),
        ({"type": "A"}, "source"),
        ({"type": "bad type!", "source": "a"}, "type"),
        ({"type": "A", "source": "Upper"}, "source"),
        ({"type": "A", "source": "a", "targets": ["ok", "NOT OK"]}, "targets.1"),
        ({"type": "A", "source": "a", "confidence": 2}, "confidence"),
        ({"type": "A", "source": "a", "severity": "apocalyptic"}, "severity"),
        ({"type": "A", "source": "a", "data": [1]}, "data"),
        ({"type": "A", "source": "a", "created_at": "yesterday"}, "created_at"),
        ({"type": "A", "source": "a", "headers": {"k": 1}}, "headers.k"),
        ({"type": "A", "source": "a", "surprise": 1}, "surprise"),
    ],
)
def test_reason_for_invalid_signal_names_the_field(body: dict[str, Any], field: str) -> None:
    exc = _decode_error(_entry(body))
    assert exc.reason.startswith("invalid signal")
    assert field in exc.reason


def test_reason_for_many_invalid_fields_stays_short() -> None:
    body = {name: {"wrong": True} for name in SIGNAL_FIELDS if name != "id"}
    body.update({f"extra{i}": i for i in range(50)})
    exc = _decode_error(_entry(body))
    assert len(exc.reason) < 2000


def test_entry_signal_id_of_unusable_ids_is_none() -> None:
    assert entry_signal_id({}) is None
    assert entry_signal_id({b"i": b""}) is None
    assert entry_signal_id({b"i": b"x" * 129}) is None
    assert entry_signal_id({b"i": "é".encode()}) is None
    assert entry_signal_id({b"i": b"x" * 128}) == "x" * 128
