"""Differential conformance: the connector's verdict on generated structured events, compared with

(a) the constraints of the official CloudEvents JSON Schema (cloudevents/spec, file
    ``cloudevents/formats/cloudevents.json``, draft-07), written out below in this file's own code
    (types, ``required``, ``minLength``, and the formats ``uri-reference``, ``uri``, ``date-time``
    checked by oracles written here from RFC 3986 and RFC 3339, independently of ``events.py``);
(b) the official CloudEvents Python SDK reading the same bytes: ``cloudevents.core`` (the SDK's
    current JSON format reader) and ``cloudevents.v1.http.from_json`` (its 1.x API).

The connector is the schema plus rules of its own, so its verdict must equal "the schema accepts and
none of the stricter rules applies", and every disagreement with an SDK reader must be one the
connector means. Each rule and each disagreement has an id listed and justified in
docs/cloudevents-conformance.md; a test checks that the document names every one.
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_json as legacy_from_json
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lamassu_aws_connector.events import ErrorCode, Rejection, parse_structured

DOC = Path(__file__).resolve().parents[1] / "docs" / "cloudevents-conformance.md"

# ------------------------------------------------------------------------------------------------
# (a) The JSON Schema's constraints
# ------------------------------------------------------------------------------------------------

_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUB_DELIMS = set("!$&'()*+,;=")
_HEX = set("0123456789abcdefABCDEF")
# RFC 3986 appendix B: the regular expression that splits any URI-reference into its five parts.
_SPLIT = re.compile(r"^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?$", re.DOTALL)


def _chars_ok(text: str, allowed: set[str]) -> bool:
    """Every character allowed, or part of a well-formed percent-encoding."""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "%":
            if len(text) < index + 3 or not {text[index + 1], text[index + 2]} <= _HEX:
                return False
            index += 3
            continue
        if char not in allowed:
            return False
        index += 1
    return True


_PCHAR = _UNRESERVED | _SUB_DELIMS | {":", "@"}


def _host_ok(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        literal = host[1:-1]
        if literal[:1] in ("v", "V"):
            version, dot, rest = literal[1:].partition(".")
            return (
                bool(version)
                and set(version) <= _HEX
                and bool(dot)
                and bool(rest)
                and set(rest) <= (_UNRESERVED | _SUB_DELIMS | {":"})
            )
        try:
            socket.inet_pton(socket.AF_INET6, literal)
        except OSError:
            return False
        return "%" not in literal
    return _chars_ok(host, _UNRESERVED | _SUB_DELIMS)  # reg-name (IPv4address is one too)


def _authority_ok(authority: str) -> bool:
    userinfo, at, hostport = authority.rpartition("@")
    if at and not _chars_ok(userinfo, _UNRESERVED | _SUB_DELIMS | {":"}):
        return False
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port = hostport[: close + 1], hostport[close + 1 :]
        if close < 0 or (port and not port.startswith(":")):
            return False
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    return _host_ok(host) and all(char in "0123456789" for char in port)


def is_uri_reference(value: str, *, absolute: bool = False) -> bool:
    """JSON Schema ``format: uri-reference`` (or ``uri`` when ``absolute``): RFC 3986."""
    parts = _SPLIT.match(value)
    assert parts is not None  # appendix B matches every string
    scheme, authority, path, query, fragment = parts.group(2, 4, 5, 7, 9)
    if scheme is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return False  # and as a relative reference, its first segment would hold a ':'
    if absolute and scheme is None:
        return False
    if authority is not None:
        if not _authority_ok(authority) or (path and not path.startswith("/")):
            return False
    elif path.startswith("//"):
        return False
    if scheme is None and ":" in path.split("/", 1)[0]:
        return False
    if not all(_chars_ok(segment, _PCHAR) for segment in path.split("/")):
        return False
    return all(part is None or _chars_ok(part, _PCHAR | {"/", "?"}) for part in (query, fragment))


_DATE_TIME = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.[0-9]+)?(?:[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)


def is_date_time(value: str) -> bool:
    """JSON Schema ``format: date-time``: RFC 3339 section 5.6 with the limits of section 5.7."""
    found = _DATE_TIME.fullmatch(value)
    if found is None:
        return False
    year, month, day, hour, minute, second = (int(found[name]) for name in ("y", "mo", "d", "h", "mi", "s"))
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year or 2000, month)[1]:
        return False  # year 0000 is a leap year, as 2000
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = 0
    if found["sign"]:
        if int(found["oh"]) > 23 or int(found["om"]) > 59:
            return False
        offset = (int(found["oh"]) * 60 + int(found["om"])) * (1 if found["sign"] == "+" else -1)
    # A leap second is the 61st second of 23:59 UTC.
    return second < 60 or (hour * 60 + minute - offset) % 1440 == 23 * 60 + 59


_STRING, _NULLABLE = (str,), (str, type(None))
_SCHEMA_PROPERTIES: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    # name: (JSON types, minLength 1, format)
    "id": (_STRING, True, None),
    "source": (_STRING, True, is_uri_reference),
    "specversion": (_STRING, True, None),
    "type": (_STRING, True, None),
    "datacontenttype": (_NULLABLE, True, None),
    "dataschema": (_NULLABLE, True, lambda value: is_uri_reference(value, absolute=True)),
    "subject": (_NULLABLE, True, None),
    "time": (_NULLABLE, True, is_date_time),
    # data: any JSON value. data_base64: contentEncoding base64 is an annotation in draft-07.
    "data_base64": (_NULLABLE, False, None),
}
_SCHEMA_REQUIRED = ("id", "source", "specversion", "type")


def schema_errors(instance: Any) -> list[str]:
    if not isinstance(instance, dict):
        return ["type: object"]
    errors = [f"{name}: required" for name in _SCHEMA_REQUIRED if name not in instance]
    for name, (types, min_length, valid_format) in _SCHEMA_PROPERTIES.items():
        if name not in instance:
            continue
        value = instance[name]
        if not isinstance(value, types):
            errors.append(f"{name}: type")
        elif isinstance(value, str) and min_length and not value:
            errors.append(f"{name}: minLength")
        elif isinstance(value, str) and valid_format is not None and not valid_format(value):
            errors.append(f"{name}: format")
    return errors


# ------------------------------------------------------------------------------------------------
# The connector's own rules, beyond the schema (ids as in docs/cloudevents-conformance.md)
# ------------------------------------------------------------------------------------------------

_ATTRIBUTES = {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(child) for child in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(child) for child in value), default=0)
    return 0


def stricter_rules(instance: dict[str, Any], raw: bytes) -> set[str]:
    """The connector's rules that this event breaks although the schema has nothing against it."""
    rules = set()
    if _has_member_twice(raw):
        rules.add("member-twice")
    if _depth(instance) > 64:
        rules.add("nesting")
    if b"1e400" in raw:  # the generator's only number beyond a double's range
        rules.add("number-overflow")
    if isinstance(instance.get("specversion"), str) and instance["specversion"] != "1.0":
        rules.add("specversion")
    for name, value in instance.items():
        if name in _ATTRIBUTES or name in ("data", "data_base64"):
            continue
        if not re.fullmatch(r"[a-z0-9]+", name):
            rules.add("extension-name")
        wide = isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64
        if wide or not isinstance(value, str | int | bool | type(None)):
            rules.add("extension-value")
    if "data" in instance and "data_base64" in instance:
        rules.add("data-and-data_base64")
    encoded = instance.get("data_base64")
    if isinstance(encoded, str) and not _BASE64.fullmatch(encoded):
        rules.add("data_base64-not-base64")
    time = instance.get("time")
    if isinstance(time, str) and time.startswith("0000-") and is_date_time(time):
        rules.add("year-0000")
    if any(isinstance(value, str) and _not_string_type(value) for name, value in instance.items() if name not in _DATA):
        rules.add("string-characters")
    return rules


_DATA = ("data", "data_base64")


def _not_string_type(text: str) -> bool:
    """The CloudEvents String type disallows control characters, surrogates and noncharacters."""
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or 0xFDD0 <= code <= 0xFDEF:
            return True
        if code & 0xFFFE == 0xFFFE:  # U+FFFE, U+FFFF, U+1FFFE, ... U+10FFFF
            return True
    return False


def _has_member_twice(raw: bytes) -> bool:
    twice = False

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal twice
        twice = twice or len({name for name, _ in members}) < len(members)
        return dict(members)

    json.loads(raw, object_pairs_hook=pairs)
    return twice


# ------------------------------------------------------------------------------------------------
# (b) What an SDK reader may see differently, and why (ids as in docs/cloudevents-conformance.md)
# ------------------------------------------------------------------------------------------------

# The connector refuses, an SDK reader accepts: the connector is stricter on purpose.
CONNECTOR_STRICTER_THAN_SDK = {
    "specversion",  # cloudevents.core reads 0.3 events; 1.x accepts 0.3 as well
    "extension-name",  # 1.x checks no names; core's check lets a trailing newline through
    "extension-value",
    "data-and-data_base64",  # 1.x keeps whichever comes last
    "data_base64-not-base64",  # base64.b64decode without validate skips foreign characters
    "member-twice",
    "nesting",
    "number-overflow",
    "source-not-uri-reference",
    "dataschema-not-uri",
    "year-0000",  # 1.x does not read time at all
    "time-not-rfc3339",  # dateutil's isoparse reads ISO 8601 forms RFC 3339 does not have (1.x: any string)
    "empty-attribute",  # 1.x accepts an empty id, source, type, subject, datacontenttype or dataschema
    "attribute-type",  # 1.x accepts a number as id, source or type
    "missing-attribute",  # the SDK fills in specversion 1.0 and a random id
    "string-characters",  # neither reader checks the characters of the String type
}
# An SDK reader refuses, the connector accepts: the SDK is wrong by the spec, or needlessly strict.
SDK_STRICTER_THAN_CONNECTOR = {
    "null-attribute",  # core rejects null optional attributes; the JSON format says null is unset
    "leap-second",  # dateutil cannot hold second 60
    "null-data_base64",  # 1.x base64-decodes None
}


def sdk_differences(instance: dict[str, Any], raw: bytes) -> set[str]:
    """Every documented reason an SDK reader may disagree with the connector about this event."""
    reasons = stricter_rules(instance, raw)
    source, dataschema, time = instance.get("source"), instance.get("dataschema"), instance.get("time")
    if isinstance(source, str) and source and not is_uri_reference(source):
        reasons.add("source-not-uri-reference")
    if isinstance(dataschema, str) and dataschema and not is_uri_reference(dataschema, absolute=True):
        reasons.add("dataschema-not-uri")
    if isinstance(time, str) and not is_date_time(time):
        reasons.add("time-not-rfc3339")
    if isinstance(time, str) and is_date_time(time) and time[17:19] == "60":
        reasons.add("leap-second")
    if any(instance.get(name, "") is None for name in ("time", "subject", "datacontenttype", "dataschema")):
        reasons.add("null-attribute")
    if "data_base64" in instance and instance["data_base64"] is None:
        reasons.add("null-data_base64")
    if any(instance.get(name) == "" for name in ("id", "source", "type", "subject", "datacontenttype", "dataschema")):
        reasons.add("empty-attribute")
    if any(name in instance and not isinstance(instance[name], str) for name in ("id", "source", "type")):
        reasons.add("attribute-type")
    if any(name not in instance for name in _SCHEMA_REQUIRED):
        reasons.add("missing-attribute")
    return reasons


def _core_reads(raw: bytes) -> bool:
    try:
        JSONFormat().read(None, raw)
    except Exception:
        return False
    return True


def _legacy_reads(raw: bytes) -> bool:
    try:
        legacy_from_json(raw)
    except Exception:
        return False
    return True


def _connector(raw: bytes) -> ErrorCode | None:
    try:
        parse_structured(raw, repair_missing_id=False)
    except Rejection as rejection:
        return rejection.code
    return None


# ------------------------------------------------------------------------------------------------
# Generated events
# ------------------------------------------------------------------------------------------------

_URI_EXAMPLES = [
    "lamassu/ca",
    "lamassuiot/ca",
    "lamassuiot.ca",
    "lrn://ca",
    "source://lamassu.io/ctx/source/service/devmanager",
    "http://lamassu.example.com:8085/api",
    "aws/cloud-trail",
    "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
    "mailto:cncf-wg-serverless@lists.cncf.io",
    "/sensors/tn-1234567/alerts",
    "1-555-123-4567",
    "https://lamassu.io/schemas/ca.json#/defs/ca",
]
_uri_parts = st.tuples(
    st.sampled_from(["", "", "http:", "lrn:", "urn:", "a+b.c-d:", "1x:", ":", "x y:", "h\u00e9:"]),
    st.sampled_from(
        [
            *("", "", "//host", "//user:pw@host:8080", "//", "//[::1]", "//[::g]", "//[v1.x]", "//[fe80::1%25e]"),
            *("//ho st", "//h:8o", "//a@b@c", "//[::1]x", "//10.0.0.1:"),
        ]
    ),
    st.sampled_from(["", "/", "/a/b", "a/b", "a:b/c", "//x", "/%41", "/%4", "/\u00e9", "/a b", "./x", "a/b:c"]),
    st.sampled_from(["", "", "?", "?a=b/c?d", "?a b", "?%zz"]),
    st.sampled_from(["", "", "#", "#f/?", "#a#b", "#%20"]),
)
uris = st.one_of(
    st.sampled_from(_URI_EXAMPLES),
    _uri_parts.map("".join),
    st.text(alphabet="aZ09-._~!$&'()*+,;=:@/?#[]% {}\\\"|^`\u00e9", max_size=16),
)

_time_parts = st.tuples(
    st.sampled_from(["2024", "2023", "1970", "0000", "9999", "\u0662\u0660\u0662\u0664", "24"]),
    st.sampled_from(["-02", "-12", "-13", "-00", "-1", "-\uff10\uff12"]),
    st.sampled_from(["-28", "-29", "-30", "-31", "-32", "-00"]),
    st.sampled_from(["T", "T", "t", " ", "_"]),
    st.sampled_from(["23", "00", "15", "24", "1"]),
    st.sampled_from([":59", ":00", ":60", ":58"]),
    st.sampled_from([":59", ":00", ":60", ":61", ":99", "", ":5"]),
    st.sampled_from(["", "", ".5", ".123456789", ".", ".\u0663"]),
    st.sampled_from(["Z", "Z", "z", "+00:00", "-08:00", "+01:00", "+23:59", "+24:00", "+0100", "", "+01", "-00:60"]),
)
times = st.one_of(
    _time_parts.map("".join),
    st.sampled_from(
        [
            "2022-04-28T11:33:01.000Z",
            "2026-01-26T10:15:02.48391834Z",
            "2016-12-31T23:59:60Z",
            "2016-12-31T15:59:60-08:00",
            "2022-04-28",
            "20220428T113301Z",
            "2022-04-28T11:33Z",
            "Thu Apr 28 2022 11:33:01 GMT+0000 (Coordinated Universal Time)",
        ]
    ),
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
_extension_names = st.sampled_from(
    ["ext", "traceid", "a1", "0", "Ext", "_watermill_message_uuid", "trace-id", "ext\n", "x" * 25, "\u00e9", ""]
)
_extension_values = st.one_of(
    st.text(max_size=5),
    st.integers(-(2**65), 2**65),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
_base64_values = st.one_of(
    st.binary(max_size=12).map(lambda data: base64.b64encode(data).decode()),
    st.sampled_from(["e30", "!!!!", "e30=\n", "", "e3 0=", "QR=="]),
    st.none(),
)


_GOOD_TIMES = ["2022-04-28T11:33:01.000Z", "2026-01-26T10:15:02.48391834Z", "2026-02-03T08:01:02.123+01:00"]
_GOOD_EXTENSIONS = st.tuples(
    st.sampled_from(["traceid", "spanid", "authtype", "a1", "0"]),
    st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none(),
)


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """The wire bytes of a structured event: each part well-formed, or (now and then) drawn from anything."""

    def pick(good: st.SearchStrategy[Any], anything: st.SearchStrategy[Any], odds: int = 10) -> Any:
        return draw(anything if draw(st.integers(1, odds)) == 1 else good)

    def maybe(
        name: str, present: float, good: st.SearchStrategy[Any], anything: st.SearchStrategy[Any], odds: int = 10
    ) -> None:
        if draw(st.floats(0, 1)) < present:
            instance[name] = pick(good, anything, odds)

    instance: dict[str, Any] = {}
    maybe("specversion", 0.97, st.just("1.0"), st.sampled_from(["0.3", "1", "", "2.0", 1.0, None]))
    maybe(
        "id",
        0.97,
        st.sampled_from(["e-1", "unknown"]) | st.text(min_size=1, max_size=6),
        st.sampled_from(["", None, 7]),
    )
    maybe("source", 0.97, st.sampled_from(_URI_EXAMPLES), st.sampled_from(["", None, 1]) | uris, odds=4)
    maybe("type", 0.97, st.sampled_from(["io.lamassu.ca.update", "device.create"]), st.sampled_from(["", None, 1]))
    maybe("subject", 0.2, st.sampled_from(["device/dev-1", "ca/1"]), st.sampled_from(["", None]))
    maybe("datacontenttype", 0.3, st.sampled_from(["application/json", "text/plain"]), st.sampled_from(["", None]))
    maybe("dataschema", 0.3, st.sampled_from(_URI_EXAMPLES[3:6]), uris | st.sampled_from(["", None]), odds=3)
    maybe("time", 0.5, st.sampled_from(_GOOD_TIMES), times | st.sampled_from(["", None]), odds=3)
    for name, value in draw(st.lists(_GOOD_EXTENSIONS, max_size=2)):
        instance[name] = value
    if draw(st.integers(0, 9)) == 0:
        instance[draw(_extension_names)] = draw(_extension_values)
    payload = pick(
        st.sampled_from(["none", "data", "data", "data_base64", "deep"]),
        st.sampled_from(["both", "too-deep", "overflow", "data_base64"]),
    )
    if payload in ("data", "both"):
        instance["data"] = draw(_json_values)
    if payload in ("data_base64", "both"):
        instance["data_base64"] = pick(
            st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()), _base64_values
        )
    if payload in ("deep", "too-deep"):
        levels = draw(st.sampled_from([10, 62, 63] if payload == "deep" else [64, 70]))
        instance["data"] = json.loads("[" * levels + "]" * levels)
    if payload == "overflow":
        instance["data"] = {"n": "__OVERFLOW__"}
    raw = json.dumps(instance).replace('"__OVERFLOW__"', "1e400")
    if instance and draw(st.integers(0, 19)) == 0:  # the same member again, last in the object
        name = draw(st.sampled_from(sorted(instance)))
        again = json.dumps(draw(st.sampled_from(["io.lamassu.cert.update", "1.0", "x"])))
        raw = f"{raw[:-1]}, {json.dumps(name)}: {again}}}"
    return raw.encode()


# Each documented difference, shown once whatever the generator draws.
_EXAMPLES = {
    "specversion": b'{"specversion":"0.3","id":"1","source":"s","type":"t"}',
    "extension-name": b'{"specversion":"1.0","id":"1","source":"s","type":"t","traceParent":"x"}',
    "extension-value": b'{"specversion":"1.0","id":"1","source":"s","type":"t","authclaims":{"azp":"x"}}',
    "data-and-data_base64": b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":{},"data_base64":"e30="}',
    "data_base64-not-base64": b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!!!"}',
    "member-twice": b'{"specversion":"1.0","id":"1","source":"s","type":"t","type":"u"}',
    "nesting": b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":' + b"[" * 64 + b"]" * 64 + b"}",
    "number-overflow": b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":1e400}',
    "year-0000": b'{"specversion":"1.0","id":"1","source":"s","type":"t","time":"0000-01-01T00:00:00Z"}',
    "source-not-uri-reference": b'{"specversion":"1.0","id":"1","source":"lamassu ca","type":"t"}',
    "dataschema-not-uri": b'{"specversion":"1.0","id":"1","source":"s","type":"t","dataschema":"schemas/ca"}',
    "time-not-rfc3339": b'{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2022-04-28T11:33Z"}',
    "empty-attribute": b'{"specversion":"1.0","id":"","source":"s","type":"t"}',
    "attribute-type": b'{"specversion":"1.0","id":1,"source":"s","type":"t"}',
    "missing-attribute": b'{"id":"1","source":"s","type":"t"}',
    "null-attribute": b'{"specversion":"1.0","id":"1","source":"s","type":"t","subject":null}',
    "leap-second": b'{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2016-12-31T23:59:60Z"}',
    "null-data_base64": b'{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":null}',
    "string-characters": b'{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"a\\u0001b"}',
}


def _check(raw: bytes) -> set[str]:
    instance = json.loads(raw)
    verdict = _connector(raw)
    errors = schema_errors(instance)
    rules = stricter_rules(instance, raw)
    # (a) The connector accepts exactly what the schema accepts and no rule of its own refuses.
    assert (verdict is None) == (not errors and not rules), (raw, verdict, errors, rules)
    if verdict is not None:
        if rules & {"member-twice", "nesting", "number-overflow"}:
            assert verdict == ErrorCode.INVALID_JSON, raw
        elif "specversion" not in instance:
            assert verdict == ErrorCode.NOT_CLOUDEVENT, raw
        else:
            assert verdict == ErrorCode.INVALID_ATTRIBUTE, raw
    # (b) Every disagreement with an SDK reader is a documented one, in its direction.
    reasons = sdk_differences(instance, raw)
    seen = set()
    for sdk_accepts in (_core_reads(raw), _legacy_reads(raw)):
        if sdk_accepts and verdict is not None:
            assert reasons & CONNECTOR_STRICTER_THAN_SDK, (raw, verdict, reasons)
            seen |= reasons & CONNECTOR_STRICTER_THAN_SDK
        if not sdk_accepts and verdict is None:
            assert reasons & SDK_STRICTER_THAN_CONNECTOR, (raw, reasons)
            seen |= reasons & SDK_STRICTER_THAN_CONNECTOR
    return seen | rules


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated())
@example(_EXAMPLES["member-twice"])
@example(_EXAMPLES["nesting"])
def test_connector_verdict_matches_schema_and_sdk_but_for_documented_differences(raw: bytes) -> None:
    for reason in sorted(_check(raw)):
        event(reason)


@pytest.mark.parametrize("reason", sorted(_EXAMPLES))
def test_each_documented_difference_is_real(reason: str) -> None:
    """Each example shows its difference: the connector and the schema or an SDK reader disagree."""
    raw = _EXAMPLES[reason]
    assert reason in _check(raw)
    instance = json.loads(raw)
    connector_accepts = _connector(raw) is None
    others = {not schema_errors(instance), _core_reads(raw), _legacy_reads(raw)}
    assert others != {connector_accepts}, "no reader disagrees: the difference is not real"


def test_document_lists_every_difference() -> None:
    text = DOC.read_text(encoding="utf-8")
    differences = text.split("\n## Differences", 1)[1].split("\n## ", 1)[0]
    ids = set(re.findall(r"^\| `([a-z0-9_-]+)` \|", differences, re.MULTILINE))
    expected = CONNECTOR_STRICTER_THAN_SDK | SDK_STRICTER_THAN_CONNECTOR | set(_EXAMPLES)
    assert ids == expected, (sorted(expected - ids), sorted(ids - expected))
    assert "cloudevents/formats/cloudevents.json" in text


@pytest.mark.parametrize(
    ("value", "reference", "uri"),
    [
        ("lamassu/ca", True, False),
        ("lrn://ca", True, True),
        ("http://[::1]:80/a?b#c", True, True),
        ("http://[::1]x/", False, False),
        ("//host", True, False),
        ("a:b/c", True, True),
        ("1a:b", False, False),
        (":x", False, False),
        ("a/b:c", True, False),
        ("", True, False),
        ("%4", False, False),
        ("http://h/%C3%A9", True, True),
        ("http://h/\u00e9", False, False),
    ],
)
def test_uri_oracle_itself(value: str, reference: bool, uri: bool) -> None:
    """The test's own RFC 3986 oracle, on cases worked out by hand from the RFC's grammar."""
    assert (is_uri_reference(value), is_uri_reference(value, absolute=True)) == (reference, uri)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2024-02-29T00:00:00Z", True),
        ("2023-02-29T00:00:00Z", False),
        ("0000-02-29T00:00:00Z", True),
        ("2016-12-31T23:59:60Z", True),
        ("2016-12-31T15:59:60-08:00", True),
        ("2016-12-31T23:58:60Z", False),
        ("2024-05-01t12:00:00.5z", True),
        ("2024-05-01T12:00:00", False),
        ("2024-05-01T24:00:00Z", False),
        ("2024-05-01T12:00:00+24:00", False),
    ],
)
def test_date_time_oracle_itself(value: str, valid: bool) -> None:
    assert is_date_time(value) is valid


def test_generator_reaches_every_verdict() -> None:
    """A differential test that only ever saw valid events would prove little."""
    verdicts: Counter[str] = Counter()

    @settings(max_examples=300, database=None, derandomize=True)
    @given(generated())
    def sample(raw: bytes) -> None:
        verdict = _connector(raw)
        verdicts["ok" if verdict is None else verdict.value] += 1

    sample()
    assert min(verdicts["ok"], verdicts["invalid_attribute"], verdicts["invalid_json"]) >= 30, verdicts
