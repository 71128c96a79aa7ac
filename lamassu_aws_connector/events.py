"""The one event model: CloudEvents 1.0 in JSON, parsed from AMQP deliveries and SQS bodies.

Lamassu publishes structured-mode JSON whatever its content type says (``text/json`` or none),
so structured mode is the default and binary mode is recognised by its attribute headers
(``ce-``, ``cloudEvents_`` or ``cloudEvents:`` prefixes). Every rejection carries an
:class:`ErrorCode` and a sentence naming the offending field.

Strict where ambiguity would hurt a reader downstream (docs/cloudevents-conformance.md): a valid
structured body is forwarded byte for byte, so a document that two readers could read differently
(a member given twice, nesting no reader or re-serializer survives) is refused rather than forwarded.
Re-serialized events (binary mode, repaired ids) keep JSON numbers exactly as they were written.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .outcomes import ErrorCode

__all__ = ["CloudEvent", "ErrorCode", "ParsedEvent", "Rejection", "identify", "parse_amqp", "parse_structured"]


class Rejection(Exception):
    """A message that can never be forwarded as it is."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Deepest nesting of objects and arrays in an event, the event object itself being level 1. Lamassu's
# deepest real events nest 6 levels; 64 is the default limit of .NET's System.Text.Json and Json.NET
# readers, far below orjson's re-serialization limit (254) and Python's recursion limit (1000).
MAX_DEPTH = 64
# identify() parses a rejected body up to this size to name it in logs; larger ones are only peeked at.
MAX_IDENTIFY_PARSE_BYTES = 2 * 1024 * 1024

_EXTENSION_NAME = re.compile(r"[a-z0-9]+\Z")
# ASCII digits only: \d would also match Arabic-Indic or full-width digits, which int() accepts.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)
# What the CloudEvents String type disallows (spec "Type System"): the control characters
# U+0000-U+001F and U+007F-U+009F, surrogates, and Unicode's noncharacters (U+FDD0-U+FDEF and the
# last two code points of every plane). SQS refuses some of them in attributes, Go's and JS's
# readers pass them on to logs and headers.
_NOT_STRING_CHARACTER = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(17))
    + "]"
)
_W3C_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_BINARY_PREFIXES = ("ce-", "cloudevents_", "cloudevents:")
# JSON-format members that hold the payload, never attributes: a header must not set them.
_RESERVED_HEADER_NAMES = ("data", "data_base64")
_REPAIR_NAMESPACE = uuid.UUID("6f1c2a8e-4b1d-5e0a-9c3f-2d7b8e4a1c05")
_JSON_WHITESPACE = b" \t\r\n"
# Python codecs that are no charset any producer could mean (escape-sequence and IDNA transforms).
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"})

# RFC 3986 (section 3 and appendix A), written out: URI-reference = URI / relative-ref. Every
# repetition runs over characters its delimiter is not one of, so possessive quantifiers (Python 3.11)
# lose no match and keep a long value linear.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"


def _run(chars: str, at_least_one: bool = False) -> str:
    return rf"(?:[{chars}]++|{_PCT}){'++' if at_least_one else '*+'}"


_SEGMENT = _run(rf"{_UNRESERVED}{_SUB_DELIMS}:@")
_SEGMENT_NZ = _run(rf"{_UNRESERVED}{_SUB_DELIMS}:@", at_least_one=True)
_SEGMENT_NZ_NC = _run(rf"{_UNRESERVED}{_SUB_DELIMS}@", at_least_one=True)  # no ":": it would read as a scheme
_USERINFO = _run(rf"{_UNRESERVED}{_SUB_DELIMS}:")
_REG_NAME = _run(rf"{_UNRESERVED}{_SUB_DELIMS}")  # also covers IPv4address
_AUTHORITY = rf"(?:{_USERINFO}@)?(?:\[(?P<ip_literal>[^\[\]/?#@]*+)\]|{_REG_NAME})(?::[0-9]*+)?"
_PATH_ABEMPTY = rf"(?:/{_SEGMENT})*+"
_PATH_ABSOLUTE = rf"/(?:{_SEGMENT_NZ}{_PATH_ABEMPTY})?"
_QUERY_OR_FRAGMENT = _run(rf"{_UNRESERVED}{_SUB_DELIMS}:@/?")
_TAIL = rf"(?:\?{_QUERY_OR_FRAGMENT})?(?:#{_QUERY_OR_FRAGMENT})?"
_URI = re.compile(
    rf"[A-Za-z][A-Za-z0-9+\-.]*+:(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_SEGMENT_NZ}{_PATH_ABEMPTY}|)"
    + _TAIL
)
_RELATIVE_REF = re.compile(
    rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_SEGMENT_NZ_NC}{_PATH_ABEMPTY}|){_TAIL}"
)
_IP_FUTURE = re.compile(rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+")
_NOT_URI_CHARACTER = re.compile(rf"[^{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@%]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URI_CACHE_LIMIT = 256  # characters: longer values are checked every time, never kept
_COLON_ESCAPE = re.compile(rb"\\u003[aA]")
_NOT_OPENING_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[{")


def check_rfc3339(value: str) -> str:
    """``value`` if it is an RFC 3339 timestamp (ASCII digits, a real date, an offset), else ValueError."""
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError("must be an RFC 3339 timestamp with a time-zone offset, e.g. 2024-05-01T12:00:00Z")
    if value[-1] == "Z":
        # What Lamassu sends: a UTC time. datetime's C parser checks it is a real one in a tenth of the
        # time of the checks below; with an offset it accepts minutes up to 99, so offsets go on.
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            pass  # the checks below say why, or accept a leap second
        else:
            return value
    return _rfc3339_details(value, match)


def _rfc3339_details(value: str, match: re.Match[str]) -> str:
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if second > 60:
        raise ValueError(f"has seconds {second:02d}; RFC 3339 allows 00 to 59, and 60 for a leap second")
    try:
        # Leap second 60 is legal in RFC 3339; datetime cannot hold it.
        dt.datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        raise ValueError(f"is not a real date and time ({exc})") from None
    offset = 0
    if match.group(8) is not None:
        offset_hours, offset_minutes = int(match.group(9)), int(match.group(10))
        if offset_hours > 23 or offset_minutes > 59:
            raise ValueError("has an impossible time-zone offset")
        offset = (offset_hours * 60 + offset_minutes) * (1 if match.group(8) == "+" else -1)
    if second == 60 and (hour * 60 + minute - offset) % 1440 != 23 * 60 + 59:
        raise ValueError("has second 60 away from 23:59 UTC, the only minute that can hold a leap second")
    return value


def uri_problem(value: str, *, absolute: bool = False) -> str | None:
    """Why ``value`` is not an RFC 3986 URI-reference (or, ``absolute``, a URI with a scheme); None if it is."""
    if len(value) <= _URI_CACHE_LIMIT:
        return _cached_uri_problem(value, absolute)
    return _uri_problem(value, absolute)


def _uri_problem(value: str, absolute: bool) -> str | None:
    bad = _NOT_URI_CHARACTER.search(value)
    if bad is not None:
        return f"has {bad.group()!r} at index {bad.start()}, which a URI must percent-encode (RFC 3986)"
    bad = _BAD_PERCENT.search(value)
    if bad is not None:
        return f"has a '%' not followed by two hex digits at index {bad.start()} (RFC 3986)"
    match = _URI.fullmatch(value) if absolute else _URI.fullmatch(value) or _RELATIVE_REF.fullmatch(value)
    if match is None:
        if absolute:
            return "must be an absolute URI with a scheme, e.g. https://example.com/schema.json (RFC 3986)"
        return "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"
    literal = match.group("ip_literal")
    if literal is not None and not _valid_ip_literal(literal):
        shown = literal if len(literal) <= 45 else literal[:40] + "..."
        return f"has an invalid IP literal [{shown}]"
    return None


_cached_uri_problem = functools.lru_cache(maxsize=4096)(_uri_problem)  # sources repeat: a few per producer


def _valid_ip_literal(literal: str) -> bool:
    if _IP_FUTURE.fullmatch(literal):
        return True
    if "%" in literal:  # a zone id is RFC 6874, not RFC 3986
        return False
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


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
        return None if value is None else check_rfc3339(value)

    @field_validator("source")
    @classmethod
    def _source_is_uri_reference(cls, value: str) -> str:
        problem = uri_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("dataschema")
    @classmethod
    def _dataschema_is_uri(cls, value: str | None) -> str | None:
        problem = None if value is None else uri_problem(value, absolute=True)
        if problem is not None:
            raise ValueError(problem)
        return value

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
        self._string_characters()
        return self

    def _string_characters(self) -> None:
        extensions = self.__pydantic_extra__ or {}
        core = (self.id, self.source, self.type, self.subject, self.datacontenttype, self.dataschema, self.time)
        joined = "".join(value for value in (*core, *extensions.values()) if isinstance(value, str))
        # The common case in C: ASCII text is printable exactly when it holds no control character.
        if (joined.isascii() and joined.isprintable()) or _NOT_STRING_CHARACTER.search(joined) is None:
            return
        names = ("id", "source", "type", "subject", "datacontenttype", "dataschema", "time")
        for name, value in (*zip(names, core, strict=True), *extensions.items()):
            found = _NOT_STRING_CHARACTER.search(value) if isinstance(value, str) else None
            if found is not None:
                raise ValueError(
                    f"attribute {name!r} holds the character U+{ord(found.group()):04X}, which the CloudEvents "
                    "String type does not allow (control characters, surrogates, noncharacters)"
                )

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


# W3C Trace Context: at most 32 list members, and a platform need carry no more than 512 characters.
TRACESTATE_MAX_CHARS = 512


def carried_tracestate(value: Any) -> str | None:
    """The tracestate to pass on with its traceparent: a longer one than W3C asks anyone to carry is
    dropped (the trace goes on without vendor state), never a reason to refuse the message."""
    if not isinstance(value, str) or not value or len(value) > TRACESTATE_MAX_CHARS:
        return None
    return value


def parse_structured(body: bytes, *, repair_missing_id: bool = True, add_correlation_id: bool = False) -> ParsedEvent:
    """Parse a structured-mode JSON CloudEvent; a valid body is kept byte for byte.

    ``add_correlation_id``: a body that is re-serialized anyway (repaired id) also gets the
    ``correlationid`` extension (= its id) when it has none; a body kept as is never changes.
    """
    obj = _load_json(body, what="body", max_depth=MAX_DEPTH)
    if not isinstance(obj, dict):
        raise Rejection(ErrorCode.NOT_CLOUDEVENT, f"body is a JSON {_json_kind(obj)}, not a CloudEvent object")
    if "specversion" not in obj:
        missing = [name for name in ("specversion", "id", "source", "type") if name not in obj]
        raise Rejection(
            ErrorCode.NOT_CLOUDEVENT,
            "JSON object is not a CloudEvent: required attributes missing: " + ", ".join(missing),
        )
    if not (repair_missing_id and obj.get("id") in (None, "")):
        return ParsedEvent(event=_validate(obj), body=body)
    obj["id"] = derive_id(body)
    if add_correlation_id:
        obj.setdefault("correlationid", obj["id"])
    event = _validate(obj)
    # Re-serialize from a parse that keeps every JSON number as written (orjson would turn an
    # integer beyond 64 bits or a long decimal into a float and change its value).
    wire = json.loads(body, parse_int=orjson.Fragment, parse_float=orjson.Fragment)
    wire["id"] = obj["id"]
    if add_correlation_id:
        wire.setdefault("correlationid", obj["id"])
    return ParsedEvent(event=event, body=orjson.dumps(wire), repaired_id=True)


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


# identify() looks at most this much of a body it cannot parse, for its top-level "id" and "type".
_PEEK_BYTES = 16384
_PEEK_STRING = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_PEEK_COLON = re.compile(rb"\s*:\s*")
_PEEK_TOKEN = re.compile(rb'["{}\[\]]')
_IDENTITY_MAX_CHARS = 200


def identify(body: bytes, headers: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Best-effort ``event_id`` and ``event_type`` of a message that was rejected, for its log line and
    ``dlq list``: from binary-mode headers, else the parsed body, else a peek at its first 16 KiB.
    Never raises; values are cut to 200 characters. Rejection path only: it may parse the body again."""
    found: dict[str, str] = {}
    for key, value in (headers or {}).items():
        lowered = str(key).lower()
        for prefix in _BINARY_PREFIXES:
            name = lowered[len(prefix) :] if lowered.startswith(prefix) else None
            if name in ("id", "type") and isinstance(value, str | bytes) and value:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                found.setdefault(f"event_{name}", text[:_IDENTITY_MAX_CHARS])
    if len(found) == 2:
        return found
    obj: Any = None
    if len(body) <= MAX_IDENTIFY_PARSE_BYTES:
        try:
            obj = orjson.loads(body)
        except (orjson.JSONDecodeError, RecursionError):
            obj = None
    peeked = _top_level_strings(body[:_PEEK_BYTES], {b"id", b"type"})
    for name in ("id", "type"):
        if f"event_{name}" in found:
            continue
        first = _json_string(peeked.get(name.encode(), b""))
        if isinstance(obj, dict):
            value = obj.get(name)
            if isinstance(value, str) and value:
                # A member given twice: the parser kept the last, a first-wins reader sees the first.
                shown = value if not first or first == value else f"{first} (and {value})"
                found[f"event_{name}"] = shown[:_IDENTITY_MAX_CHARS]
            continue
        if first:
            found[f"event_{name}"] = first[:_IDENTITY_MAX_CHARS]
    return found


def _json_string(raw: bytes) -> str:
    """The text of a JSON string's raw content (escapes resolved), or the raw bytes as text."""
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    return text if isinstance(text, str) else ""


def _top_level_strings(head: bytes, wanted: set[bytes]) -> dict[bytes, bytes]:
    """The ``wanted`` string members of the outermost object in the first bytes of a body that is not
    valid JSON (first occurrence wins; nested objects are skipped, so data.id is never taken for the
    event's); stops once all are found."""
    found: dict[bytes, bytes] = {}
    depth = 0
    position = 0
    while True:
        token = _PEEK_TOKEN.search(head, position)
        if token is None:
            break
        position = token.start()
        byte = head[position]
        if byte == 0x22:  # a string: a member name at depth 1 when a colon follows it
            string = _PEEK_STRING.match(head, position)
            if string is None:
                break
            position = string.end()
            colon = _PEEK_COLON.match(head, position)
            if depth == 1 and colon is not None:
                value = _PEEK_STRING.match(head, colon.end())
                if value is not None:
                    if string.group(1) in wanted:
                        found.setdefault(string.group(1), value.group(1))
                        if len(found) == len(wanted):
                            break
                    position = value.end()
            continue
        if byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
        position += 1
    return found


def forbidden_sqs_character(body: bytes) -> str | None:
    """SQS accepts #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF only.

    Valid UTF-8 JSON can contain no control character or surrogate, which leaves U+FFFE and U+FFFF.
    """
    if b"\xef\xbf" not in body:  # one scan for the common case: no U+F000-U+FFFF at all
        return None
    for encoded, name in ((b"\xef\xbf\xbe", "U+FFFE"), (b"\xef\xbf\xbf", "U+FFFF")):
        if encoded in body:
            return name
    return None


def _binary_attributes(headers: Mapping[str, Any]) -> dict[str, Any] | None:
    attributes: dict[str, Any] = {}
    keys: dict[str, str] = {}  # attribute name -> the header that set it
    duplicate: tuple[str, str, str] | None = None
    for key, value in headers.items():
        lowered = key.lower()
        for prefix in _BINARY_PREFIXES:
            if lowered.startswith(prefix):
                name = key[len(prefix) :]
                if name in keys and duplicate is None:
                    duplicate = (name, keys[name], key)
                keys[name] = key
                attributes[name] = _header_value(key, value)
                break
    if "specversion" not in attributes:
        return None
    if duplicate is not None:
        name, first, second = duplicate
        raise Rejection(
            ErrorCode.INVALID_ATTRIBUTE,
            f"headers {first!r} and {second!r} both set attribute {name!r}; readers would disagree on its value",
        )
    for name in _RESERVED_HEADER_NAMES:
        if name in attributes:
            raise Rejection(
                ErrorCode.INVALID_ATTRIBUTE,
                f"header {keys[name]!r} would set {name!r}, which is not an attribute: "
                "in binary mode the data is the message body",
            )
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
    raw_data: orjson.Fragment | None = None  # JSON data as written, spliced into the event
    if body:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type in ("application/json", "text/json") or media_type.endswith("+json"):
            # The data sits one level below the event object.
            obj["data"] = _load_json(body, what="data", max_depth=MAX_DEPTH - 1)
            raw_data = orjson.Fragment(body.strip(_JSON_WHITESPACE))
        elif media_type.startswith("text/") or media_type.endswith(("/xml", "+xml")):
            obj["data"] = _decode_text(body, content_type or "")
        else:
            obj["data_base64"] = base64.b64encode(body).decode("ascii")
    if not obj.get("type"):
        raise Rejection(ErrorCode.INVALID_ATTRIBUTE, "binary-mode event without the required attribute type")
    repaired = False
    if repair_missing_id and obj.get("id") in (None, ""):
        obj["id"] = derive_id(orjson.dumps(_with_data(obj, raw_data)))
        repaired = True
    if add_correlation_id and obj.get("id"):
        obj.setdefault("correlationid", obj["id"])
    event = _validate(obj)
    return ParsedEvent(
        event=event, body=orjson.dumps(_with_data(obj, raw_data)), binary_mode=True, repaired_id=repaired
    )


def _with_data(obj: dict[str, Any], raw_data: orjson.Fragment | None) -> dict[str, Any]:
    return obj if raw_data is None else {**obj, "data": raw_data}


def _decode_text(body: bytes, content_type: str) -> str:
    charset = _charset(content_type)
    if charset is None:
        codec = "utf-8"
    else:
        try:
            codec = codecs.lookup(charset).name
        except LookupError:
            codec = ""
        if not codec or codec in _NOT_CHARSETS:
            raise Rejection(
                ErrorCode.INVALID_ATTRIBUTE, f"datacontenttype names charset {charset!r}, which is not a known charset"
            )
    try:
        text = body.decode(codec)
    except LookupError:  # a bytes-to-bytes codec such as base64 or zlib
        raise Rejection(
            ErrorCode.INVALID_ATTRIBUTE, f"datacontenttype names charset {charset!r}, which is not a text encoding"
        ) from None
    except UnicodeDecodeError as exc:
        if codec == "utf-8":
            raise Rejection(ErrorCode.INVALID_UTF8, f"text data is not valid UTF-8 at byte {exc.start}") from None
        raise Rejection(
            ErrorCode.INVALID_ATTRIBUTE, f"text data is not valid {charset} (datacontenttype) at byte {exc.start}"
        ) from None
    if codec != "utf-8":
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. UTF-7 can spell a lone surrogate
            raise Rejection(
                ErrorCode.INVALID_UTF8, f"text data decodes to a lone surrogate at character {exc.start}"
            ) from None
    return text


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip() or None
    return None


def _load_json(body: bytes, *, what: str, max_depth: int) -> Any:
    """orjson's parse, refused where readers could disagree: members given twice, deep nesting."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _json_rejection(body, exc, what, max_depth) from None
    if isinstance(value, dict | list):
        # Cheap bound first: fewer brackets in the whole text than the limit cannot nest deeper.
        if len(body.translate(None, _NOT_OPENING_BRACKETS)) > max_depth and _deeper_than(value, max_depth):
            raise _too_deep(what, max_depth)
        # A body that is orjson's own compact serialization of what it parsed has no member twice
        # (what orjson kept has none). Otherwise count: every member has one ':' outside strings, so
        # the text's ':' count is members + colons in strings, and so is that of the serialization of
        # what orjson kept. They differ when orjson dropped a member given twice (it keeps the last),
        # or when a string spells a colon as an escape; only then parse slowly to name the member.
        compact = orjson.dumps(value)
        if compact != body and (
            body.count(b":") != compact.count(b":") or (b"\\" in body and _COLON_ESCAPE.search(body) is not None)
        ):
            name = _duplicate_member(body)
            if name is not None:
                raise Rejection(
                    ErrorCode.INVALID_JSON,
                    f"{what} has member {name!r} twice in one JSON object; readers disagree on which one counts",
                )
    return value


def _deeper_than(value: dict[str, Any] | list[Any], levels: int) -> bool:
    if levels < 1:
        return True
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, dict | list) and _deeper_than(child, levels - 1):
            return True
    return False


def _too_deep(what: str, max_depth: int) -> Rejection:
    within = "" if max_depth == MAX_DEPTH else f", more than {MAX_DEPTH} within the event"
    return Rejection(
        ErrorCode.INVALID_JSON,
        f"{what} nests objects and arrays more than {max_depth} levels deep{within}; "
        f"the limit is {MAX_DEPTH} levels per event",
    )


class _DuplicateMemberError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise _DuplicateMemberError(name)
        seen.add(name)


def _duplicate_member(body: bytes) -> str | None:
    try:
        # Numbers are not converted (len): only the member names matter here.
        json.loads(body, object_pairs_hook=_no_duplicates, parse_int=len, parse_float=len)
    except _DuplicateMemberError as exc:
        return exc.name
    return None


def _json_rejection(body: bytes, exc: orjson.JSONDecodeError, what: str, max_depth: int) -> Rejection:
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
    # orjson's own limit (1024) is far beyond ours; 3.12+ says "depth limit", 3.10-3.11 "recursion depth".
    if "depth limit" in exc.msg or "recursion depth" in exc.msg:
        return _too_deep(what, max_depth)
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
