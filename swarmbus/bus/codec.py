"""The versioned envelope: how a ``Signal`` is laid out as a stream entry.

Version 1 is three fields::

    v  b"1"                 envelope version
    i  signal id            also read by Lua scripts, which cannot parse JSON
    d  JSON object          the signal (its id included; ``i`` wins if they differ)
    t  agent name           optional: the one target a replayed dead letter is for (every
                            other group acks the entry without looking at it)

Decoding never raises anything but ``DecodeError``: a stream can hold anything that was
written to it with a plain XADD, and a worker must survive all of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from ..errors import DecodeError, InvalidSignal, PayloadTooLarge
from .signal import AGENT_NAME, SIGNAL_ID, Signal

__all__ = ["ENVELOPE_VERSION", "decode", "encode", "entry_signal_id", "entry_target"]

ENVELOPE_VERSION = b"1"
F_VERSION = b"v"
F_ID = b"i"
F_DATA = b"d"
F_TARGET = b"t"
_SIGNAL_ID = re.compile(SIGNAL_ID)
_AGENT = re.compile(AGENT_NAME)


def encode(signal: Signal, max_bytes: int) -> dict[bytes, bytes]:
    """Envelope fields for ``signal``; ``PayloadTooLarge`` past ``max_bytes``.

    Serialised by pydantic's own (Rust) JSON writer. It writes NaN and infinities as
    bare ``NaN``/``Infinity`` tokens, which no JSON reader accepts: only when one of those
    words appears at all is the payload walked to tell a string from a real number.
    """
    try:
        data = signal.model_dump_json().encode()
    except ValueError as exc:  # integers past 64 bits
        raise InvalidSignal(f"signal is not JSON-serialisable: {exc}") from None
    if b"NaN" in data or b"Infinity" in data:
        _check_json(signal.data, "data")
        _check_json(signal.context, "context")
    size = len(data)
    if size > max_bytes:
        raise PayloadTooLarge(size, max_bytes)
    return {F_VERSION: ENVELOPE_VERSION, F_ID: signal.id.encode(), F_DATA: data}


def _check_json(value: Any, path: str) -> None:
    """Refuse NaN and infinities: JSON has no such numbers and orjson would write null."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidSignal(f"{path} is {value}: JSON has no NaN or infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")


def entry_signal_id(fields: Mapping[bytes, bytes]) -> str | None:
    """The signal id of an entry, or None when the entry has no valid one.

    Valid means what ``Signal.id`` accepts: the id keys the status hash and travels
    packed in script arguments, so an id with a ',' or a space must never get that far.
    """
    raw = fields.get(F_ID)
    if not raw or len(raw) > 128:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if _SIGNAL_ID.fullmatch(text) else None


def entry_target(fields: Mapping[bytes, bytes]) -> str | None:
    """The single target a replayed entry is restricted to, if any (``t``).

    ``DecodeError`` when the field is there but is no agent name: an entry that only
    looks like a replay is garbage, and garbage is dead-lettered, never skipped.
    """
    raw = fields.get(F_TARGET)
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    if not _AGENT.fullmatch(text):
        raise DecodeError(f"envelope's 't' (replay target) {text[:64]!r} is not an agent name")
    return text


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "signal"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode(fields: Mapping[bytes, bytes], max_bytes: int) -> Signal:
    """The signal in a stream entry; ``DecodeError`` says what is wrong with it."""
    version = fields.get(F_VERSION)
    if version is None:
        names = ", ".join(sorted(_text(k) for k in fields)[:8]) or "none"
        raise DecodeError(f"not a swarmbus envelope: no 'v' field (fields: {names})")
    if version != ENVELOPE_VERSION:
        raise DecodeError(
            f"unsupported envelope version {_text(version)!r} (this swarmbus reads version 1)"
        )
    signal_id = entry_signal_id(fields)
    if signal_id is None:
        raise DecodeError("envelope has no valid 'i' (signal id) field")
    data = fields.get(F_DATA)
    if data is None:
        raise DecodeError("envelope has no 'd' (data) field")
    if len(data) > max_bytes:
        raise DecodeError(f"entry data is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        signal = Signal.model_validate_json(data)
    except ValidationError as exc:
        raise DecodeError(_invalid(data, exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"invalid signal: {exc}") from None
    if signal.id != signal_id:  # ``i`` is what the scripts keyed the status by
        signal = signal.model_copy(update={"id": signal_id})
    return signal


def _invalid(data: bytes, exc: ValidationError) -> str:
    """The reason a ``d`` field did not validate, in the words a reader needs."""
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        return f"'d' is not valid JSON: {err}"
    if not isinstance(body, dict):
        return f"'d' is JSON {type(body).__name__}, expected an object"
    return f"invalid signal: {_describe(exc)}"


def _text(raw: bytes) -> str:
    return raw[:64].decode("utf-8", "backslashreplace")
