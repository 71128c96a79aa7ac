"""Lamassu-shaped CloudEvents of each generation, written for these tests.

Shapes follow what each Lamassu generation puts on the wire (see the README's wire notes):
v1 (2022) publishes to the default exchange with ``content_type=text/json``; v2.0 to topic
exchange ``lamassu`` with ``text/json`` and a non-W3C ``traceparent`` header; v2.4+/v3 to
``lamassu-events`` with no content type, ``_watermill_message_uuid`` and OTEL headers, ids that
may be ``"unknown"`` and extensions in Go-map order.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

W3C_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def body(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def v1_ca_update(name: str = "CA-test", status: str = "REVOKED") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "1f0e2d3c4b5a6978:1f0e2d3c4b5a6978:0000000000000000:1",
        "source": "lamassu/ca",
        "type": "io.lamassu.ca.update",
        "datacontenttype": "application/json",
        "time": "2022-03-31T07:10:55.371676082Z",
        "data": {"name": name, "status": status},
    }


def v1_cert_update(serial: str = "4a-1c-77-02-9e") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "aa11bb22cc33dd44:aa11bb22cc33dd44:0000000000000000:1",
        "source": "lamassu/ca",
        "type": "io.lamassu.cert.update",
        "datacontenttype": "application/json",
        "time": "2022-04-28T11:33:01.128763Z",
        "data": {"name": "CA-test", "serial_number": serial, "status": "REVOKED"},
    }


def v2_certificate_update(event_id: str = "", serial: str = "61-5e-0b-9c") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "lamassuiot/ca",
        "type": "io.lamassuiot.certificate.update",
        "datacontenttype": "application/json",
        "time": "2023-01-18T09:42:11.52033621Z",
        "data": {"ca_name": "Lamassu-Root", "serial_number": serial, "status": "REVOKED", "revocation_reason": 1},
    }


def v3_status_update(device_id: str = "dev-0001", event_id: str = "unknown") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "source://lamassu.io/ctx/source/service/devmanager",
        "type": "device.status.update",
        "subject": f"device/{device_id}",
        "datacontenttype": "application/json",
        "time": "2026-02-03T08:01:02.123456789+01:00",
        "data": {
            "previous": {"id": device_id, "status": "ACTIVE"},
            "updated": {"id": device_id, "status": "REVOKED"},
        },
        "authtype": "jwt",
        "traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
        "spanid": "00f067aa0ba902b7",
        "authclaims": '{"azp":"frontend"}',
    }


def v3_device_create(device_id: str | None = None) -> dict[str, Any]:
    device_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
    return {
        "specversion": "1.0",
        "id": f"{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}",
        "source": "source://lamassu.io/ctx/source/service/devmanager",
        "type": "device.create",
        "subject": f"device/{device_id}",
        "datacontenttype": "application/json",
        "time": "2026-01-26T10:15:02.48391834Z",
        "data": {"id": device_id, "status": "NO_IDENTITY", "tags": ["doorbell"], "metadata": {}},
    }


def v3_headers(event: dict[str, Any]) -> dict[str, Any]:
    return {"_watermill_message_uuid": event["id"], "traceparent": W3C_TRACEPARENT}


def binary_headers(prefix: str, event_type: str = "io.lamassu.ca.update") -> dict[str, Any]:
    return {
        f"{prefix}specversion": "1.0",
        f"{prefix}id": "5d2c9e7a11f04b0c",
        f"{prefix}source": "lamassu/ca",
        f"{prefix}type": event_type,
        f"{prefix}time": "2022-03-31T07:10:55.371676082Z",
    }


# Malformed inputs with the dead-letter code each must get.
BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "truncated": (body(v1_ca_update())[:60], "invalid_json"),
    "bom": (b"\xef\xbb\xbf" + body(v1_ca_update()), "invalid_json"),
    "latin1": (body(v1_ca_update(name="Espa\u00f1a")).replace("ñ".encode(), b"\xd1"), "invalid_utf8"),
    "lone_surrogate": (body(v1_ca_update()).replace(b"CA-test", b"CA\\ud800"), "invalid_utf8"),
    "not_cloudevent": (b'{"name":"CA-test","status":"REVOKED"}', "not_cloudevent"),
    "array": (b"[1,2,3]", "not_cloudevent"),
    "specversion_03": (body({**v1_ca_update(), "specversion": "0.3"}), "invalid_attribute"),
    "specversion_number": (body(v1_ca_update()).replace(b'"1.0"', b"1.0"), "invalid_attribute"),
    "empty_source": (body({**v1_ca_update(), "source": ""}), "invalid_attribute"),
    "missing_type": (body({k: v for k, v in v1_ca_update().items() if k != "type"}), "invalid_attribute"),
    "time_no_offset": (body({**v1_ca_update(), "time": "2022-04-28T11:33:01"}), "invalid_attribute"),
    "time_js": (
        body({**v1_ca_update(), "time": "Thu Apr 28 2022 11:33:01 GMT+0000 (Coordinated Universal Time)"}),
        "invalid_attribute",
    ),
    "data_and_base64": (body({**v1_ca_update(), "data_base64": "e30="}), "invalid_attribute"),
    "bad_extension_name": (body({**v1_ca_update(), "traceParent": W3C_TRACEPARENT}), "invalid_attribute"),
    "object_extension": (body({**v1_ca_update(), "authclaims": {"azp": "x"}}), "invalid_attribute"),
    "random_bytes": (bytes(range(256)), "invalid_utf8"),
    "empty": (b"", "invalid_json"),
}
