"""Parser unit tests: every generation accepted, every malformed input rejected with its code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import rabbitmq as sdk_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkCloudEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamassu_aws_connector.catalogue_cli import validate_files
from lamassu_aws_connector.events import (
    _RFC3339,
    MAX_DEPTH,
    ErrorCode,
    ParsedEvent,
    Rejection,
    _rfc3339_details,
    check_rfc3339,
    derive_id,
    forbidden_sqs_character,
    identify,
    parse_amqp,
    parse_structured,
)

from . import samples

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "lamassu-corpus"


@pytest.mark.parametrize(
    "event",
    [
        samples.v1_ca_update(),
        samples.v1_cert_update(),
        samples.v2_certificate_update(event_id="4bf92f35:00f067aa"),
        samples.v3_status_update(),
        samples.v3_device_create(),
    ],
    ids=["v1-ca", "v1-cert", "v2-cert", "v3-status-id-unknown", "v3-device"],
)
def test_valid_structured_event_is_kept_byte_for_byte(event: dict[str, Any]) -> None:
    raw = samples.body(event)
    parsed = parse_amqp(raw, "text/json", None)
    assert parsed.body is raw
    assert (parsed.id, parsed.type) == (event["id"], event["type"])
    assert not parsed.repaired_id and not parsed.binary_mode


def test_lambda_reply_without_datacontenttype_in_other_key_order_is_valid() -> None:
    raw = (
        b'{"id":"6f1c2b4e","time":"2022-06-01T10:00:00.000Z","type":"io.lamassu.iotcore.config.response",'
        b'"source":"aws/lambda","specversion":"1.0","data":{"account_id":"123456789012"}}'
    )
    assert parse_structured(raw).event.datacontenttype is None


@pytest.mark.parametrize("name", sorted(samples.BAD_BODIES))
def test_malformed_body_is_rejected_with_its_code(name: str) -> None:
    raw, code = samples.BAD_BODIES[name]
    with pytest.raises(Rejection) as caught:
        parse_amqp(raw, "text/json", None)
    assert caught.value.code == code
    assert caught.value.message


def test_error_message_names_the_field() -> None:
    with pytest.raises(Rejection) as caught:
        parse_structured(samples.BAD_BODIES["time_no_offset"][0])
    assert "time" in caught.value.message and "RFC 3339" in caught.value.message


@pytest.mark.parametrize("bad_id", ["", None])
def test_missing_id_is_repaired_deterministically(bad_id: str | None) -> None:
    event = samples.v2_certificate_update()
    if bad_id is None:
        del event["id"]
    raw = samples.body(event)
    first, second = parse_structured(raw), parse_structured(raw)
    assert first.repaired_id and first.id == second.id == derive_id(raw)
    assert orjson.loads(first.body)["id"] == first.id
    with pytest.raises(Rejection) as caught:
        parse_structured(raw, repair_missing_id=False)
    assert caught.value.code == ErrorCode.INVALID_ATTRIBUTE


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents_", "cloudEvents:"])
def test_binary_mode_is_rebuilt_as_structured(prefix: str) -> None:
    headers = samples.binary_headers(prefix)
    parsed = parse_amqp(b'{"name":"CA2","status":"REVOKED"}', "application/json; charset=utf-8", headers)
    assert parsed.binary_mode
    event = orjson.loads(parsed.body)
    assert event["type"] == "io.lamassu.ca.update"
    assert event["data"] == {"name": "CA2", "status": "REVOKED"}
    assert event["datacontenttype"] == "application/json; charset=utf-8"


def test_binary_mode_empty_body_means_no_data() -> None:
    parsed = parse_amqp(b"", "application/json", samples.binary_headers("cloudEvents_"))
    assert "data" not in orjson.loads(parsed.body)


def test_binary_mode_opaque_data_is_base64() -> None:
    parsed = parse_amqp(b"\x00\x01\xff", "application/octet-stream", samples.binary_headers("ce-"))
    assert orjson.loads(parsed.body)["data_base64"] == "AAH/"


def test_binary_mode_without_type_is_rejected() -> None:
    headers = samples.binary_headers("cloudEvents_")
    del headers["cloudEvents_type"]
    with pytest.raises(Rejection) as caught:
        parse_amqp(b"{}", "application/json", headers)
    assert caught.value.code == ErrorCode.INVALID_ATTRIBUTE and "type" in caught.value.message


def test_structured_body_wins_over_unrelated_headers() -> None:
    event = samples.v3_status_update()
    raw = samples.body(event)
    assert parse_amqp(raw, None, samples.v3_headers(event)).body is raw


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_sdk_rabbitmq_output_is_accepted(mode: str) -> None:
    """The official CloudEvents SDK is an independent producer: what it writes must parse."""
    sdk_event = SdkCloudEvent(
        {
            "type": "device.create",
            "source": "lamassu/test",
            "subject": "device/dev-1",
            "datacontenttype": "application/json",
        },
        {"id": "dev-1"},
    )
    convert = sdk_rabbitmq.to_structured if mode == "structured" else sdk_rabbitmq.to_binary
    message = convert(sdk_event, JSONFormat())
    parsed = parse_amqp(message.body, message.content_type, message.headers)
    assert (parsed.type, parsed.event.subject, parsed.binary_mode) == (
        "device.create",
        "device/dev-1",
        mode == "binary",
    )
    assert orjson.loads(parsed.body)["data"] == {"id": "dev-1"}


def test_sqs_forbidden_characters_detected() -> None:
    assert forbidden_sqs_character('{"a":"\uffff"}'.encode()) == "U+FFFF"
    assert forbidden_sqs_character('{"a":"\ufffe"}'.encode()) == "U+FFFE"
    # U+F000-U+FFFD share the first two bytes: allowed
    assert forbidden_sqs_character('{"a":"\uf000\ufffd"}'.encode()) is None
    assert forbidden_sqs_character(samples.body(samples.v1_ca_update())) is None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(raw: bytes) -> None:
    _parse_or_reject(raw, None, None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
_attribute_names = st.sampled_from(
    ["specversion", "id", "source", "type", "time", "subject", "data", "data_base64", "datacontenttype", "Bad_Name"]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_attribute_names | st.text(max_size=10), _json | st.just("1.0"), max_size=10))
def test_random_json_objects_never_crash(obj: dict[str, Any]) -> None:
    _parse_or_reject(json.dumps(obj).encode(), "text/json", None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["ce-specversion", "ce-id", "ce-type", "ce-source", "cloudEvents:time", "ce-Bad", "x"]),
        st.text(max_size=20) | st.binary(max_size=8) | st.integers() | st.booleans(),
        max_size=7,
    ),
    st.binary(max_size=64),
    st.sampled_from([None, "application/json", "text/plain", "application/octet-stream"]),
)
@example({"ce-specversion": "1.0", "ce-id": "", "ce-type": -(2**63) - 1}, b"", None)
def test_random_binary_mode_never_crashes(headers: dict[str, Any], raw: bytes, content_type: str | None) -> None:
    _parse_or_reject(raw, content_type, headers)


def _parse_or_reject(raw: bytes, content_type: str | None, headers: dict[str, Any] | None) -> None:
    try:
        parsed = parse_amqp(raw, content_type, headers)
    except Rejection as rejection:
        assert rejection.code in set(ErrorCode) and rejection.message
    else:
        # Whatever is accepted must itself be a valid structured event.
        assert parse_structured(parsed.body).id == parsed.id


# Expected outcome of each file in ../shared/lamassu-corpus (present on developer machines only).
_CORPUS_BAD = {
    "missing-id.json": None,
    "empty-id.json": None,
    "empty-source.json": "invalid_attribute",
    "specversion-0.3.json": "invalid_attribute",
    "specversion-number.json": "invalid_attribute",
    "data-and-data_base64.json": "invalid_attribute",
    "truncated.json": "invalid_json",
    "non-utf8.bin": "invalid_utf8",
    "utf8-bom.json": "invalid_json",
    "lone-surrogate-escape.json": "invalid_utf8",
    "time-no-timezone.json": "invalid_attribute",
    "time-js-date-tostring.json": "invalid_attribute",
    "extension-bad-attribute-names.json": "invalid_attribute",
    "not-a-cloudevent.json": "not_cloudevent",
    "binary-mode-colon-prefix.amqp.json": None,
    "binary-mode-underscore-prefix.amqp.json": None,
    "binary-mode-missing-type-header.amqp.json": "invalid_attribute",
    "binary-mode-headers-only-empty-body.amqp.json": None,
}


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/lamassu-corpus is not on this machine")
def test_shared_corpus() -> None:
    for path in sorted((CORPUS / "events").glob("*.json")):
        parse_amqp(path.read_bytes(), None, None)
    for name, expected in _CORPUS_BAD.items():
        raw = (CORPUS / "bad" / name).read_bytes()
        content_type, headers = None, None
        if name.endswith(".amqp.json"):
            described = json.loads(raw)
            raw = described["body_utf8"].encode()
            content_type = described["properties"].get("content_type")
            headers = described["headers"]
        try:
            parse_amqp(raw, content_type, headers)
            outcome = None
        except Rejection as rejection:
            outcome = rejection.code.value
        assert outcome == expected, name


# ------------------------------------------------------------------------------------------------
# Trust boundaries: strict where two readers could read one event differently
# ------------------------------------------------------------------------------------------------

_EVENT = b'{"specversion":"1.0","id":"e-1","source":"lamassu/ca","type":"io.lamassu.ca.update"%s}'
_HEADERS = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "lamassu/ca", "ce-type": "io.lamassu.ca.update"}


def _rejection(raw: bytes, content_type: str | None = None, headers: dict[str, Any] | None = None) -> Rejection:
    with pytest.raises(Rejection) as caught:
        parse_amqp(raw, content_type, headers)
    return caught.value


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (_EVENT % b',"type":"io.lamassu.cert.update"', "type"),  # a first-wins reader sees another type
        (_EVENT % b',"data":{"status":"ACTIVE","status":"REVOKED"}', "status"),
        (_EVENT % b',"data":[{"a":{"b":1,"b":1}}]', "b"),  # even when both say the same
        (_EVENT % b',"typ\\u0065":"x"', "type"),  # the same name spelt with an escape
        # A dropped member balanced by an escaped colon: the cheap count alone would miss it.
        (_EVENT % b',"type":"io.x","note":"a\\u003ab"', "type"),
    ],
    ids=["top-level-type", "in-data", "deep-same-value", "escaped-name", "count-balanced-by-escape"],
)
def test_member_given_twice_is_rejected_and_named(raw: bytes, name: str) -> None:
    rejection = _rejection(raw)
    assert rejection.code == ErrorCode.INVALID_JSON
    assert rejection.message == (
        f"body has member {name!r} twice in one JSON object; readers disagree on which one counts"
    )


def test_member_given_twice_in_binary_mode_data_is_rejected() -> None:
    rejection = _rejection(b'{"status":"ACTIVE","status":"REVOKED"}', "application/json", dict(_HEADERS))
    assert (rejection.code, rejection.message) == (
        ErrorCode.INVALID_JSON,
        "data has member 'status' twice in one JSON object; readers disagree on which one counts",
    )


@pytest.mark.parametrize(
    "raw",
    [
        _EVENT % b',"data":{"a\\u003ab":"c\\u003Ad"}',  # escaped colons, no member twice
        b'{\n  "specversion" : "1.0",\n  "id" : "e-1",\n  "source" : "lamassu/ca",\n  "type" : "t",\n'
        b'  "data" : { "a" : [ {"a": 1}, {"a": 2} ], "url" : "http://x:80/" }\n}\n',  # pretty, same names apart
        _EVENT % b',"authclaims":"{\\"azp\\":\\"front\\u0026end\\"}"',  # Go's escaping of &
    ],
    ids=["escaped-colons", "pretty-printed", "go-escapes"],
)
def test_body_without_members_twice_is_kept_byte_for_byte(raw: bytes) -> None:
    assert parse_structured(raw).body is raw


_json_names = st.sampled_from(["a", "b", "type", "id", "a:b", "x"])
_json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab:"\\{}[] \u00e9', max_size=6),
    lambda children: st.lists(children, max_size=3) | st.lists(st.tuples(_json_names, children), max_size=4),
    max_leaves=12,
)


def _write(doc: Any, escape: st.DataObject) -> str:
    """JSON text that keeps member pairs as drawn (a name may repeat) and escapes some characters."""
    if isinstance(doc, list) and all(isinstance(item, tuple) for item in doc) and doc:
        members = (f"{_write(name, escape)}:{_write(value, escape)}" for name, value in doc)
        return "{" + ",".join(members) + "}"
    if isinstance(doc, list):
        return "[" + " , ".join(_write(item, escape) for item in doc) + "]"
    if isinstance(doc, str):
        escaped = escape.draw(st.lists(st.booleans(), min_size=len(doc), max_size=len(doc)))
        body = "".join(
            f"\\u{ord(char):04x}" if flag else json.dumps(char)[1:-1] for char, flag in zip(doc, escaped, strict=True)
        )
        return f'"{body}"'
    return json.dumps(doc)


def _has_member_twice(doc: Any) -> bool:
    if isinstance(doc, list) and doc and all(isinstance(item, tuple) for item in doc):
        names = [name for name, _ in doc]
        return len(set(names)) < len(names) or any(_has_member_twice(value) for _, value in doc)
    return isinstance(doc, list) and any(_has_member_twice(item) for item in doc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_docs, st.data())
def test_members_twice_detected_exactly(doc: Any, escape: st.DataObject) -> None:
    """The cheap check (colon counts, canonical bytes) against a plain oracle, escapes included."""
    raw = _EVENT % (b',"data":' + _write(doc, escape).encode())
    try:
        parsed = parse_structured(raw)
    except Rejection as rejection:
        assert _has_member_twice(doc), rejection.message
        assert rejection.code == ErrorCode.INVALID_JSON and "twice" in rejection.message
    else:
        assert not _has_member_twice(doc)
        assert parsed.body is raw


@pytest.mark.parametrize(("levels", "ok"), [(63, True), (64, False), (300, False), (1000, False), (5000, False)])
def test_nesting_limit_in_structured_data(levels: int, ok: bool) -> None:
    # The event object is level 1, so data may nest MAX_DEPTH - 1 levels.
    assert MAX_DEPTH == 64
    raw = _EVENT % (b',"data":' + _nested(levels))
    if ok:
        assert parse_structured(raw).body is raw
        return
    rejection = _rejection(raw)
    assert rejection.code == ErrorCode.INVALID_JSON
    assert rejection.message == (
        "body nests objects and arrays more than 64 levels deep; the limit is 64 levels per event"
    )


@pytest.mark.parametrize("levels", [253, 254, 1000])
def test_nesting_limit_when_the_id_is_repaired(levels: int) -> None:
    """Re-serialization crashed at 254 levels (orjson's limit) before the limit existed."""
    rejection = _rejection(_EVENT.replace(b'"e-1"', b'""') % (b',"data":' + _nested(levels)))
    assert rejection.code == ErrorCode.INVALID_JSON and "64 levels" in rejection.message


@pytest.mark.parametrize("attribute", ["time", "subject", "id", "specversion", "data_base64", "ext"])
def test_deep_attribute_value_is_rejected_cleanly(attribute: str) -> None:
    """At ~1000 levels, describing the bad value hit RecursionError."""
    raw = _EVENT % (f',"{attribute}":'.encode() + _nested(1000))
    assert _rejection(raw).code == ErrorCode.INVALID_JSON


@pytest.mark.parametrize(("levels", "ok"), [(63, True), (64, False), (254, False), (2000, False)])
def test_nesting_limit_in_binary_mode_data(levels: int, ok: bool) -> None:
    headers = dict(_HEADERS)
    if ok:
        parsed = parse_amqp(_nested(levels), "application/json", headers)
        assert parse_structured(parsed.body).id == "e-1"
        return
    rejection = _rejection(_nested(levels), "application/json", headers)
    assert (rejection.code, rejection.message) == (
        ErrorCode.INVALID_JSON,
        "data nests objects and arrays more than 63 levels deep, more than 64 within the event; "
        "the limit is 64 levels per event",
    )


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_validate_reports_every_file_after_a_deeply_nested_one(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(_EVENT % (b',"subject":' + _nested(1000)))
    good = tmp_path / "good.json"
    good.write_bytes(samples.body(samples.v1_ca_update()) + b"\n")
    result = _cli("validate", str(deep), str(good))
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines == [
        f"{deep}: invalid: invalid_json: body nests objects and arrays more than 64 levels deep; "
        "the limit is 64 levels per event",
        f"{good}: ok: io.lamassu.ca.update (v1 command)",
    ]


def test_validate_reads_standard_input_for_dash(tmp_path: Path) -> None:
    good = samples.body(samples.v1_ca_update())
    result = _cli("validate", "-", stdin=good)
    assert (result.returncode, result.stdout.decode()) == (0, "-: ok: io.lamassu.ca.update (v1 command)\n")
    out = io.StringIO()
    assert validate_files(["-"], out, stdin=io.BytesIO(_EVENT % b',"type":"x"')) == 1
    assert out.getvalue().startswith("-: invalid: invalid_json: body has member 'type' twice")


def test_validate_survives_a_failure_it_did_not_foresee(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[bool] = []

    def flaky(body: bytes, **options: Any) -> ParsedEvent:
        if not raised:
            raised.append(True)
            raise RecursionError("maximum recursion depth exceeded")
        return parse_structured(body, **options)

    good = tmp_path / "good.json"
    good.write_bytes(samples.body(samples.v1_ca_update()))
    monkeypatch.setattr("lamassu_aws_connector.catalogue_cli.parse_structured", flaky)
    out = io.StringIO()
    assert validate_files([str(good), str(good)], out) == 1
    first, second = out.getvalue().splitlines()
    assert first == f"{good}: invalid: internal_error: RecursionError: maximum recursion depth exceeded"
    assert second.startswith(f"{good}: ok")


@pytest.mark.parametrize(
    "time",
    [
        "\u0662\u0660\u0662\u0664-05-01T12:00:00Z",  # Arabic-Indic year
        "2024-05-01T1\uff12:00:00Z",  # full-width digit in the hour
        "2024-05-01T12:00:00.\u0663Z",  # in the fraction
        "2024-05-01T12:00:00+0\u0661:00",  # in the offset
    ],
)
def test_time_with_non_ascii_digits_is_rejected(time: str) -> None:
    rejection = _rejection(_EVENT % f',"time":"{time}"'.encode())
    assert rejection.code == ErrorCode.INVALID_ATTRIBUTE
    assert rejection.message.startswith("attribute time: must be an RFC 3339 timestamp")


@pytest.mark.parametrize("second", ["61", "69", "99"])
def test_time_seconds_beyond_60_are_rejected(second: str) -> None:
    rejection = _rejection(_EVENT % f',"time":"2016-12-31T23:59:{second}Z"'.encode())
    assert rejection.code == ErrorCode.INVALID_ATTRIBUTE
    assert rejection.message.startswith(
        f"attribute time: has seconds {second}; RFC 3339 allows 00 to 59, and 60 for a leap second"
    )


@pytest.mark.parametrize("time", ["2016-12-31T23:59:60Z", "2016-12-31T15:59:60.5-08:00", "2017-01-01T00:59:60+01:00"])
def test_leap_second_is_accepted(time: str) -> None:
    raw = _EVENT % f',"time":"{time}"'.encode()
    assert parse_structured(raw).event.time == time


_TIME_PARTS = st.tuples(
    st.sampled_from(["0000", "1900", "2016", "2024", "9999"]),
    *(st.integers(0, top).map("{:02d}".format) for top in (13, 32, 25, 61, 62)),
    st.sampled_from(["", ".5", ".123456789"]),
    st.sampled_from(["Z", "z", "+00:00", "-01:00", "+00:60", "+24:00"]),
)


@settings(max_examples=3000)
@given(_TIME_PARTS)
def test_utc_time_fast_path_agrees_with_the_detailed_checks(parts: tuple[str, ...]) -> None:
    year, month, day, hour, minute, second, fraction, zone = parts
    value = f"{year}-{month}-{day}T{hour}:{minute}:{second}{fraction}{zone}"
    match = _RFC3339.match(value)
    assert match is not None

    def verdict(check: Callable[[], str]) -> str:
        try:
            return check()
        except ValueError as exc:
            return str(exc)

    assert verdict(lambda: check_rfc3339(value)) == verdict(lambda: _rfc3339_details(value, match))


def test_leap_second_away_from_2359_utc_is_rejected() -> None:
    rejection = _rejection(_EVENT % b',"time":"2016-12-31T12:00:60Z"')
    assert rejection.code == ErrorCode.INVALID_ATTRIBUTE
    assert "second 60 away from 23:59 UTC" in rejection.message


_REAL_SOURCES = [
    "lamassu/ca",
    "lamassuiot/ca",
    "lamassuiot.ca",
    "lamassuiot/device-manager",
    "lamassu/aws-connector/0b1d4c2e-6f5a-4f4e-9d55-3c2f1e7a9b10",
    "aws/lambda",
    "aws/cloud-trail",
    "cloud-trail",
    "lrn://ca",
    "source://lamassu.io/ctx/source/service/devmanager",
    "http://lamassu.example.com:8085/api/ca",
    # the examples of the CloudEvents JSON Schema and spec
    "https://github.com/cloudevents",
    "mailto:cncf-wg-serverless@lists.cncf.io",
    "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
    "cloudevents/spec/pull/123",
    "/sensors/tn-1234567/alerts",
    "1-555-123-4567",
    "/mycontext",
    "http://[2001:db8::7]:80/c=GB?objectClass?one#frag",
    "http://[v7.fe80::a+en1]/",
    "foo://user:p%41ss@host:/a;b=c/%7E/?q=/?x#f/?",
    ".",
    "?only=query",
    "#only-fragment",
    "a/b:c",
]


@pytest.mark.parametrize("source", _REAL_SOURCES)
def test_real_and_rfc_sources_are_uri_references(source: str) -> None:
    raw = (_EVENT % b"").replace(b'"lamassu/ca"', json.dumps(source).encode())
    assert parse_structured(raw).body is raw


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("lamassu ca", "has ' ' at index 7, which a URI must percent-encode (RFC 3986)"),
        ("lamassu/ca\u00f1a", "has '\u00f1' at index 10, which a URI must percent-encode (RFC 3986)"),
        ("lamassu/{ca}", "has '{' at index 8, which a URI must percent-encode (RFC 3986)"),
        ("c:\\lamassu", "has '\\\\' at index 2, which a URI must percent-encode (RFC 3986)"),
        ("lamassu/%zz", "has a '%' not followed by two hex digits at index 8 (RFC 3986)"),
        ("1lamassu:ca", "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"),
        (":ca", "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"),
        ("http://a@b@c/", "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"),
        ("http://host:8o/", "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"),
        ("http://[::g]/", "has an invalid IP literal [::g]"),
        ("http://[fe80::1%25en0]/", "has an invalid IP literal [fe80::1%25en0]"),
        ("x#a#b", "must be a URI-reference (RFC 3986), e.g. lamassu/ca or https://lamassu.io/ca"),
    ],
)
def test_source_that_is_no_uri_reference_is_rejected(source: str, message: str) -> None:
    rejection = _rejection((_EVENT % b"").replace(b'"lamassu/ca"', json.dumps(source).encode()))
    assert rejection.code == ErrorCode.INVALID_ATTRIBUTE
    assert rejection.message == f"attribute source: {message} (got {source!r})"


@pytest.mark.parametrize(
    ("dataschema", "ok"),
    [
        ("https://lamassu.io/schemas/ca.update.json", True),
        ("https://lamassu.io/schemas/events.json#/definitions/ca", True),  # as the JSON Schema's format uri
        ("urn:lamassu:schema:ca:1", True),
        ("schemas/ca.update.json", False),
        ("/schemas/ca.update.json", False),
        ("//lamassu.io/schemas/ca.json", False),
        ("https://lamassu.io/a schema.json", False),
    ],
)
def test_dataschema_must_be_an_absolute_uri(dataschema: str, ok: bool) -> None:
    raw = _EVENT % f',"dataschema":{json.dumps(dataschema)}'.encode()
    if ok:
        assert parse_structured(raw).event.dataschema == dataschema
        return
    rejection = _rejection(raw)
    assert rejection.code == ErrorCode.INVALID_ATTRIBUTE
    assert rejection.message.startswith("attribute dataschema: ")


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents_", "cloudEvents:"])
@pytest.mark.parametrize("name", ["data", "data_base64"])
def test_binary_mode_header_cannot_set_the_data(prefix: str, name: str) -> None:
    headers = {**samples.binary_headers(prefix), f"{prefix}{name}": "eyJzdGF0dXMiOiJSRVZPS0VEIn0="}
    rejection = _rejection(b'{"status":"ACTIVE"}', "application/json", headers)
    assert (rejection.code, rejection.message) == (
        ErrorCode.INVALID_ATTRIBUTE,
        f"header {prefix + name!r} would set {name!r}, which is not an attribute: "
        "in binary mode the data is the message body",
    )


def test_binary_mode_attribute_given_by_two_headers_is_rejected() -> None:
    headers = {**samples.binary_headers("ce-"), "cloudEvents:type": "io.lamassu.cert.update"}
    rejection = _rejection(b"", None, headers)
    assert (rejection.code, rejection.message) == (
        ErrorCode.INVALID_ATTRIBUTE,
        "headers 'ce-type' and 'cloudEvents:type' both set attribute 'type'; readers would disagree on its value",
    )


_EXACT_DATA = (
    b'{"serial": 123456789012345678901234567890, "big": 9007199254740993, "u64": 18446744073709551615,'
    b' "neg": -9223372036854775809, "dec": 0.1000000000000000000001, "exp": 1E2, "zero": -0}'
)
_EXACT_NUMBERS = [
    b"123456789012345678901234567890",
    b"9007199254740993",
    b"18446744073709551615",
    b"-9223372036854775809",
    b"0.1000000000000000000001",
    b"1E2",
    b"-0",
]


def test_binary_mode_keeps_json_numbers_exactly() -> None:
    parsed = parse_amqp(b"\n " + _EXACT_DATA + b" \r\n", "application/json", dict(_HEADERS))
    assert parsed.body.endswith(b',"data":' + _EXACT_DATA + b"}")
    for number in _EXACT_NUMBERS:
        assert number in parsed.body
    assert json.loads(parsed.body, parse_float=str)["data"]["dec"] == "0.1000000000000000000001"
    again = parse_structured(parsed.body)
    assert again.body is parsed.body and again.id == "e-1"


def test_binary_mode_repaired_id_is_stable_and_numbers_exact() -> None:
    headers = {key: value for key, value in _HEADERS.items() if key != "ce-id"}
    first = parse_amqp(_EXACT_DATA, "application/json", headers)
    second = parse_amqp(_EXACT_DATA, "application/json", headers)
    assert first.repaired_id and first.id == second.id and first.body == second.body
    assert all(number in first.body for number in _EXACT_NUMBERS)


def test_repaired_structured_event_keeps_json_numbers_exactly() -> None:
    raw = _EVENT.replace(b'"e-1"', b'""') % (b',"data":' + _EXACT_DATA)
    parsed = parse_structured(raw, add_correlation_id=True)
    assert parsed.repaired_id and parsed.id == derive_id(raw)
    assert all(number in parsed.body for number in _EXACT_NUMBERS)
    event = json.loads(parsed.body, parse_float=str, parse_int=str)
    assert (event["id"], event["correlationid"]) == (parsed.id, parsed.id)
    assert event["data"]["serial"] == "123456789012345678901234567890"
    assert list(event) == ["specversion", "id", "source", "type", "data", "correlationid"]


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        ("text/plain; charset=iso-8859-1", "Espa\u00f1a".encode("latin-1"), "Espa\u00f1a"),
        ('text/plain; charset="ISO-8859-1"; format=flowed', "Espa\u00f1a".encode("latin-1"), "Espa\u00f1a"),
        ("text/plain;charset=windows-1252", "\u20ac 5".encode("cp1252"), "\u20ac 5"),
        ("text/plain; charset=utf-16", "\u00f1".encode("utf-16"), "\u00f1"),
        ("application/xml; charset=shift_jis", "<a>\u65e5</a>".encode("shift_jis"), "<a>\u65e5</a>"),
        ("text/plain", "Espa\u00f1a".encode(), "Espa\u00f1a"),  # no charset: UTF-8
    ],
)
def test_binary_mode_text_data_honours_the_charset(content_type: str, body: bytes, text: str) -> None:
    parsed = parse_amqp(body, content_type, dict(_HEADERS))
    event = orjson.loads(parsed.body)
    assert (event["data"], event["datacontenttype"]) == (text, content_type)


@pytest.mark.parametrize(
    ("content_type", "body", "code", "message"),
    [
        (
            "text/plain; charset=klingon",
            b"x",
            ErrorCode.INVALID_ATTRIBUTE,
            "datacontenttype names charset 'klingon', which is not a known charset",
        ),
        (
            "text/plain; charset=unicode_escape",
            b"\\u00f1",
            ErrorCode.INVALID_ATTRIBUTE,
            "datacontenttype names charset 'unicode_escape', which is not a known charset",
        ),
        (
            "text/plain; charset=base64",
            b"eA==",
            ErrorCode.INVALID_ATTRIBUTE,
            "datacontenttype names charset 'base64', which is not a text encoding",
        ),
        (
            "text/plain; charset=shift_jis",
            b"\x81",
            ErrorCode.INVALID_ATTRIBUTE,
            "text data is not valid shift_jis (datacontenttype) at byte 0",
        ),
        ("text/plain; charset=utf-8", b"ok\xff", ErrorCode.INVALID_UTF8, "text data is not valid UTF-8 at byte 2"),
        (
            "text/plain; charset=utf-7",
            b"+2AA-",
            ErrorCode.INVALID_UTF8,
            "text data decodes to a lone surrogate at character 0",
        ),
    ],
)
def test_binary_mode_text_data_in_a_bad_charset_is_rejected(
    content_type: str, body: bytes, code: ErrorCode, message: str
) -> None:
    rejection = _rejection(body, content_type, dict(_HEADERS))
    assert (rejection.code, rejection.message) == (code, message)


def test_identify_names_a_rejected_message_as_far_as_it_can_be_read() -> None:
    assert identify(b'{"id": "e-1", "type": "ca.create", "time": "never"}') == {
        "event_id": "e-1",
        "event_type": "ca.create",
    }
    assert identify(b'\xef\xbb\xbf{"type":"a\\"b","id":"e-2"') == {"event_id": "e-2", "event_type": 'a"b'}
    # A member given twice is named with both values, the first (a first-wins reader's) first.
    assert identify(b'{"type":"a","id":"e-3","type":"b"}') == {"event_id": "e-3", "event_type": "a (and b)"}
    assert identify(b'{"type":"\\u0061","id":"e-4"}') == {"event_id": "e-4", "event_type": "a"}
    assert identify(b'{"id": 7, "type": ["x"]}') == {}  # parsed: only strings count
    # Not JSON, its data first: the event's own members are named, never data.id.
    broken = b'{"data": {"id": "inner", "type": "inner.t", "list": ["id"]}, "id": "e-02", "type": "outer.t" broken'
    assert identify(broken) == {"event_id": "e-02", "event_type": "outer.t"}
    assert identify(b"[1, 2]") == {} and identify(b"") == {} and identify(bytes(range(256))) == {}
    huge = b'{"id":"big-1","type":"ca.create","data":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    assert identify(huge) == {"event_id": "big-1", "event_type": "ca.create"}  # peeked at, not parsed
    headers = {"cloudEvents:id": b"bin-1", "ce-type": "ca.update", "ce-specversion": "1.0"}
    assert identify(b"\xff", headers) == {"event_id": "bin-1", "event_type": "ca.update"}
    assert identify(b'{"id": "' + b"i" * 500 + b'"}')["event_id"] == "i" * 200
