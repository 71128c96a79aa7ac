"""The one event model: CloudEvents 1.0 in JSON, parsed from AMQP deliveries and SQS bodies.

Lamassu publishes structured-mode JSON whatever its content type says (``text/json`` or none),
so structured mode is the default and binary mode is recognised by its attribute headers
(``ce-``, ``cloudEvents_`` or ``cloudEvents:`` prefixes). Every rejection carries an
:class:`ErrorCode` and a sentence naming the offending field.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .outcomes import ErrorCode

__all__ = ["CloudEvent", "ErrorCode", "ParsedEvent", "Rejection", "parse_amqp", "parse_structured"]


class Rejection(Exception):
    """A message that can never be forwarded as it is."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_EXTENSION_NAME = re.compile(r"[a-z0-9]+\Z")
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z")
_W3C_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_BINARY_PREFIXES = ("ce-", "cloudevents_", "cloudevents:")
_REPAIR_NAMESPACE = uuid.UUID("6f1c2a8e-4b1d-5e0a-9c3f-2d7b8e4a1c05")


def _rfc3339(value: str) -> str:
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError("must be an RFC 3339 timestamp with a time-zone offset, e.g. 2024-05-01T12:00:00Z")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        # Leap second 60 is legal in RFC 3339; datetime cannot hold it.
        dt.datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        raise ValueError(f"is not a real date and time ({exc})") from None
    if match.group(8) is not None and (int(match.group(9)) > 23 or int(match.group(10)) > 59):
        raise ValueError("has an impossible time-zone offset")
    return value


class CloudEvent(BaseModel):
    """CloudEvents 1.0 JSON format, strict where the spec says MUST; extensions allowed."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    datacontenttype: str | None = Field(None, min_length=1)
    dataschema: str | None = Field(None, min_length=1)
    subject: str | None = Field(None, min_length=1)
    time: str | None = None
    data: Any = None
    data_base64: str | None = None

    @field_validator("time")
    @classmethod
    def _time_is_rfc3339(cls, value: str | None) -> str | None:
        return None if value is None else _rfc3339(value)

    @field_validator("data_base64")
    @classmethod
    def _data_base64_decodes(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("is not valid base64") from None
        return value

    @model_validator(mode="after")
    def _envelope_rules(self) -> CloudEvent:
        if "data" in self.model_fields_set and "data_base64" in self.model_fields_set:
            raise ValueError("data and data_base64 are mutually exclusive (CloudEvents JSON format 3.1)")
        for name, value in (self.__pydantic_extra__ or {}).items():
            if not _EXTENSION_NAME.match(name):
                raise ValueError(
                    f"attribute name {name!r} is not allowed: CloudEvents attribute names are "
                    "lowercase letters and digits only (transport headers must not be copied into the event)"
                )
            if value is not None and not isinstance(value, str | int | bool):
                raise ValueError(f"extension {name!r} must be a string, integer or boolean, not {type(value).__name__}")
        return self

    def extension(self, name: str) -> Any:
        return (self.__pydantic_extra__ or {}).get(name)


@dataclass(slots=True, frozen=True)
class ParsedEvent:
    """A valid event and the exact structured-JSON bytes to forward."""

    event: CloudEvent
    body: bytes
    binary_mode: bool = False
    repaired_id: bool = False

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def traceparent(self) -> str | None:
        value = self.event.extension("traceparent")
        return value if isinstance(value, str) else None


def derive_id(body: bytes) -> str:
    """A stable id for an event that came without one: a redelivered copy gets the same id."""
    return str(uuid.uuid5(_REPAIR_NAMESPACE, hashlib.sha256(body).hexdigest()))


def is_w3c_traceparent(value: str) -> bool:
    return _W3C_TRACEPARENT.match(value) is not None


def parse_structured(body: bytes, *, repair_missing_id: bool = True, add_correlation_id: bool = False) -> ParsedEvent:
    """Parse a structured-mode JSON CloudEvent; a valid body is kept byte for byte.

    ``add_correlation_id``: a body that is re-serialized anyway (repaired id) also gets the
    ``correlationid`` extension (= its id) when it has none; a body kept as is never changes.
    """
    obj = _load_json(body, what="body")
    if not isinstance(obj, dict):
        raise Rejection(ErrorCode.NOT_CLOUDEVENT, f"body is a JSON {_json_kind(obj)}, not a CloudEvent object")
    if "specversion" not in obj:
        missing = [name for name in ("specversion", "id", "source", "type") if name not in obj]
        raise Rejection(
            ErrorCode.NOT_CLOUDEVENT,
            "JSON object is not a CloudEvent: required attributes missing: " + ", ".join(missing),
        )
    repaired = False
    if repair_missing_id and obj.get("id") in (None, ""):
        obj["id"] = derive_id(body)
        repaired = True
        if add_correlation_id:
            obj.setdefault("correlationid", obj["id"])
    event = _validate(obj)
    return ParsedEvent(event=event, body=orjson.dumps(obj) if repaired else body, repaired_id=repaired)


def parse_amqp(
    body: bytes,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    *,
    repair_missing_id: bool = True,
    add_correlation_id: bool = False,
) -> ParsedEvent:
    """Parse an AMQP delivery in structured or binary content mode."""
    if headers and not (content_type or "").lower().startswith("application/cloudevents"):
        attributes = _binary_attributes(headers)
        if attributes is not None:
            return _parse_binary(body, content_type, attributes, repair_missing_id, add_correlation_id)
    return parse_structured(body, repair_missing_id=repair_missing_id, add_correlation_id=add_correlation_id)


def forbidden_sqs_character(body: bytes) -> str | None:
    """SQS accepts #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF only.

    Valid UTF-8 JSON can contain no control character or surrogate, which leaves U+FFFE and U+FFFF.
    """
    for encoded, name in ((b"\xef\xbf\xbe", "U+FFFE"), (b"\xef\xbf\xbf", "U+FFFF")):
        if encoded in body:
            return name
    return None


def _binary_attributes(headers: Mapping[str, Any]) -> dict[str, Any] | None:
    attributes: dict[str, Any] = {}
    for key, value in headers.items():
        lowered = key.lower()
        for prefix in _BINARY_PREFIXES:
            if lowered.startswith(prefix):
                attributes[key[len(prefix) :]] = _header_value(key, value)
                break
    if "specversion" not in attributes:
        return None
    return attributes


def _header_value(key: str, value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Rejection(ErrorCode.INVALID_ATTRIBUTE, f"header {key!r} is not valid UTF-8") from None
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.isoformat().replace("+00:00", "Z")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise Rejection(ErrorCode.INVALID_ATTRIBUTE, f"header {key!r} holds an integer beyond 64 bits")
    if value is None or isinstance(value, str | int | bool):
        return value
    raise Rejection(
        ErrorCode.INVALID_ATTRIBUTE, f"header {key!r} has a {type(value).__name__} value; attributes are scalars"
    )


def _parse_binary(
    body: bytes,
    content_type: str | None,
    attributes: dict[str, Any],
    repair_missing_id: bool,
    add_correlation_id: bool = False,
) -> ParsedEvent:
    obj: dict[str, Any] = dict(attributes)
    if content_type:
        obj["datacontenttype"] = content_type
    if body:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type in ("application/json", "text/json") or media_type.endswith("+json"):
            obj["data"] = _load_json(body, what="data")
        elif media_type.startswith("text/") or media_type.endswith(("/xml", "+xml")):
            try:
                obj["data"] = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Rejection(ErrorCode.INVALID_UTF8, f"text data is not valid UTF-8 at byte {exc.start}") from None
        else:
            obj["data_base64"] = base64.b64encode(body).decode("ascii")
    if not obj.get("type"):
        raise Rejection(ErrorCode.INVALID_ATTRIBUTE, "binary-mode event without the required attribute type")
    repaired = False
    if repair_missing_id and obj.get("id") in (None, ""):
        obj["id"] = derive_id(orjson.dumps(obj))
        repaired = True
    if add_correlation_id and obj.get("id"):
        obj.setdefault("correlationid", obj["id"])
    event = _validate(obj)
    return ParsedEvent(event=event, body=orjson.dumps(obj), binary_mode=True, repaired_id=repaired)


def _load_json(body: bytes, *, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _json_rejection(body, exc, what) from None


def _json_rejection(body: bytes, exc: orjson.JSONDecodeError, what: str) -> Rejection:
    if "surrogate" in exc.msg and "UTF-8" not in exc.msg:
        return Rejection(
            ErrorCode.INVALID_UTF8,
            f"{what} escapes a lone UTF-16 surrogate near byte {exc.pos}; it has no UTF-8 form and SQS refuses it",
        )
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection(ErrorCode.INVALID_UTF8, f"{what} is not valid UTF-8 at byte {bad.start}")
    if body.startswith(b"\xef\xbb\xbf"):
        return Rejection(ErrorCode.INVALID_JSON, f"{what} starts with a UTF-8 byte order mark; JSON must not")
    if not body.strip():
        return Rejection(ErrorCode.INVALID_JSON, f"{what} is empty")
    return Rejection(ErrorCode.INVALID_JSON, f"{what} is not valid JSON: {exc.msg} at byte {exc.pos}")


def _validate(obj: dict[str, Any]) -> CloudEvent:
    try:
        return CloudEvent.model_validate(obj)
    except ValidationError as exc:
        raise Rejection(ErrorCode.INVALID_ATTRIBUTE, _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "event"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"required attribute {field} is missing")
        elif field == "specversion":
            parts.append(f'specversion must be the string "1.0" (got {error.get("input")!r})')
        elif field == "event":
            parts.append(message)
        else:
            shown = repr(error.get("input"))
            parts.append(f"attribute {field}: {message} (got {shown[:80]})")
    return "; ".join(parts)


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
