"""Parser unit tests: every generation accepted, every malformed input rejected with its code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import rabbitmq as sdk_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkCloudEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamassu_aws_connector.events import (
    ErrorCode,
    Rejection,
    derive_id,
    forbidden_sqs_character,
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
