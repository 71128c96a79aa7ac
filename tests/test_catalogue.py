"""The event catalogue: Lamassu's data shapes per generation, the validate/events CLI, the committed schemas."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lamassu_aws_connector import catalogue
from lamassu_aws_connector.catalogue import DataCheck, Direction, check_data, json_schemas
from lamassu_aws_connector.catalogue_cli import list_events, render_schema, validate_files
from lamassu_aws_connector.events import parse_structured
from lamassu_aws_connector.metrics import Metrics

from .test_cli import cli

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "lamassu-corpus" / "events"


def make_certificate(common_name: str = "CA1") -> tuple[str, str]:
    """A fresh self-signed certificate: (base64 of its PEM as Lamassu sends it, Lamassu-style serial)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    hex_serial = f"{cert.serial_number:x}"
    hex_serial = hex_serial.zfill(len(hex_serial) + len(hex_serial) % 2)
    serial = "-".join(hex_serial[i : i + 2] for i in range(0, len(hex_serial), 2))
    return base64.b64encode(pem).decode(), serial


CERT, SERIAL = make_certificate()
NOT_A_CERT = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n").decode()


def v3_certificate(status: str = "ACTIVE") -> dict[str, Any]:
    return {
        "serial_number": SERIAL,
        "key_id": "k-1",
        "metadata": {"lamassu.io/ca/expiration-deltas": [{"delta": "1w", "name": "Critical", "triggered": False}]},
        "status": status,
        "certificate": CERT,
        "key_metadata": {"type": "ECDSA", "bits": 256, "strength": "HIGH"},
        "subject": {"common_name": "dev-1"},
        "issuer_metadata": {"serial_number": "0a-1b", "id": "ca-1", "level": 0},
        "valid_from": "2026-01-01T00:00:00Z",
        "revocation_timestamp": "0001-01-01T00:00:00Z",
        "revocation_reason": "Unspecified",
        "type": "MANAGED",
        "engine_id": "",
        "is_ca": False,
    }


def v3_device(status: str = "ACTIVE") -> dict[str, Any]:
    return {
        "id": "dev-1",
        "tags": ["doorbell"],
        "status": status,
        "icon": "Cg",
        "metadata": {},
        "dms_owner": "dms-1",
        "slots": {},
        "events": {"2026-01-26T10:15:02Z": {"type": "CREATED", "description": ""}},
    }


# (type, direction, data) that Lamassu and the v1 Lambdas really send, one or more per generation.
VALID: list[tuple[str, Direction | None, Any]] = [
    ("io.lamassu.ca.create", None, {"name": "CA1", "serial_number": SERIAL, "cert": CERT}),
    ("io.lamassu.ca.update", None, {"name": "CA1"}),  # early builds: no status
    ("io.lamassu.ca.update", None, {"name": "CA1", "status": "REVOKED"}),
    ("io.lamassu.cert.update", None, {"name": "CA1", "serial_number": SERIAL, "status": "REVOKED"}),
    ("io.lamassu.iotcore.config.request", None, {}),
    (
        "io.lamassu.iotcore.ca.policy.attach",
        None,
        {"ca_name": "CA1", "serial_number": SERIAL, "policy": '{"Version": "2012-10-17", "Statement": []}'},
    ),
    (
        "io.lamassu.iotcore.ca.registration.signed-code",
        None,
        {"ca_cert": CERT, "ca_name": "CA1", "serial_number": SERIAL, "verification_cert": CERT},
    ),
    (
        "io.lamassu.iotcore.cert.status.update",
        Direction.COMMAND,
        {"serial_number": SERIAL, "device_id": "d", "status": "REVOKED", "device_cert": CERT},
    ),
    (
        "io.lamassu.iotcore.cert.status.update",
        Direction.REPLY,
        {"certificate_id": "ab12", "serial_number": SERIAL, "status": "REVOKED", "ca_name": "CA1"},
    ),
    (
        "io.lamassu.iotcore.config.response",
        None,
        {"account_id": "123456789012", "iot_core_endpoint": "x-ats.iot.eu-west-1.amazonaws.com"},
    ),
    ("io.lamassu.iotcore.thing.config.response", None, {"device_id": "d", "status": 404}),
    ("io.lamassu.iotcore.thing.config.response", None, [{"device_id": "d", "certificates": [{"status": "ACTIVE"}]}]),
    ("io.lamassu.iotcore.cert.updatestatus", None, {"certificateID": "ab12", "caSerialNumber": "23f93eb0"}),
    (
        "io.lamassuiot.ca.create",
        None,
        {"name": "CA1", "status": "ACTIVE", "serial_number": SERIAL, "certificate": CERT, "valid_to": 1655909532000},
    ),
    ("io.lamassuiot.certificate.update", None, {"serial_number": SERIAL, "status": "REVOKED", "revocation_reason": 1}),
    ("io.lamassuiot.device.create", None, {"id": "dev-1", "status": "PENDING_PROVISIONING", "slots": []}),
    ("certificate.status.update", None, {"previous": v3_certificate(), "updated": v3_certificate("REVOKED")}),
    ("ca.create", None, {"id": "ca-1", "certificate": v3_certificate(), "serial_number": SERIAL, "level": 0}),
    ("device.create", None, v3_device("NO_IDENTITY")),
    ("device.status.update", None, {"previous": v3_device(), "updated": v3_device("DECOMMISSIONED")}),
    ("dms.bind-device-id", None, {"certificate": v3_certificate(), "dms": {"id": "dms-1"}, "device": v3_device()}),
]


@pytest.mark.parametrize(
    ("event_type", "direction", "data"), VALID, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(VALID)]
)
def test_real_shapes_of_every_generation_are_accepted(event_type: str, direction: Direction | None, data: Any) -> None:
    assert check_data(event_type, data, direction) is None


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


V3_UPDATE = {"previous": v3_certificate(), "updated": v3_certificate("REVOKED")}

# What must not reach AWS: (type, data, the field the reason must name).
INVALID: list[tuple[str, Any, str]] = [
    ("io.lamassu.cert.update", {"name": "CA1", "serial_number": SERIAL, "status": "revoked"}, "data.status"),
    ("io.lamassu.cert.update", {"name": "CA1", "serial_number": "4A 1C 77", "status": "REVOKED"}, "data.serial_number"),
    ("io.lamassu.cert.update", {"name": "CA1", "status": "REVOKED"}, "data.serial_number is missing"),
    (
        "io.lamassu.ca.create",
        {"name": "CA1", "serial_number": SERIAL, "cert": "not base64!"},
        "data.cert: is not valid base64",
    ),
    (
        "io.lamassu.ca.create",
        {"name": "CA1", "serial_number": SERIAL, "cert": base64.b64encode(b"hello").decode()},
        "PEM",
    ),
    ("io.lamassu.ca.create", {"name": "CA1", "serial_number": SERIAL, "cert": NOT_A_CERT}, "X.509"),
    (
        "io.lamassu.iotcore.ca.policy.attach",
        {"ca_name": "CA1", "serial_number": SERIAL, "policy": "allow all"},
        "data.policy",
    ),
    ("io.lamassu.iotcore.ca.status.update", {"certificate_id": "ab", "status": "REVOKED"}, "data.status"),
    ("io.lamassuiot.certificate.update", {"serial_number": SERIAL, "status": "DELETED"}, "data.status"),
    ("certificate.status.update", _with(V3_UPDATE, "updated.status", "Revoked"), "data.updated.status"),
    ("certificate.status.update", _with(V3_UPDATE, "updated.certificate", NOT_A_CERT), "data.updated.certificate"),
    ("certificate.status.update", {"updated": v3_certificate("REVOKED")}, "data.previous is missing"),
    ("certificate.status.update", v3_certificate("REVOKED"), "data.previous is missing"),  # not an update model
    (
        "device.status.update",
        _with({"previous": v3_device(), "updated": v3_device()}, "updated.status", "GONE"),
        "data.updated.status",
    ),
    (
        "dms.bind-device-id",
        {"certificate": _with(v3_certificate(), "serial_number", "xyz")},
        "data.certificate.serial_number",
    ),
    ("device.create", "not an object", "data"),
]


@pytest.mark.parametrize(
    ("event_type", "data", "named"), INVALID, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(INVALID)]
)
def test_values_that_would_mislead_aws_are_rejected_with_the_field_named(
    event_type: str, data: Any, named: str
) -> None:
    problem = check_data(event_type, data)
    assert problem is not None
    assert named in problem


def test_unknown_types_pass_and_extra_fields_are_kept() -> None:
    assert check_data("io.example.unknown", {"anything": 1}) is None
    assert check_data("device.create", {**v3_device(), "added_in_v4": {"x": 1}}) is None


def test_a_type_used_both_ways_is_checked_against_its_direction() -> None:
    reply = {"ca_name": "CA1", "status": "INACTIVE", "ca_id": "ab"}
    assert check_data("io.lamassu.iotcore.ca.status.update", reply, Direction.REPLY) is None
    assert check_data("io.lamassu.iotcore.ca.status.update", reply, Direction.COMMAND) is not None
    assert check_data("io.lamassu.iotcore.ca.status.update", reply) is None  # either model


def test_data_check_modes() -> None:
    event = parse_structured(
        orjson.dumps(
            {"specversion": "1.0", "id": "1", "source": "s", "type": "io.lamassu.cert.update", "data": {"name": "x"}}
        )
    ).event
    fields = {"event_id": "1", "event_type": event.type, "queue": "q"}
    metrics = Metrics()
    assert DataCheck("off", metrics).rejection(event, fields) is None
    assert DataCheck("warn", metrics).rejection(event, fields) is None
    reason = DataCheck("enforce", metrics).rejection(event, fields)
    assert reason is not None and "data.serial_number is missing" in reason
    for mode in ("warn", "enforce"):
        assert (
            metrics.registry.get_sample_value(
                "lamassu_connector_events_invalid_data_total", {"event_type": "io.lamassu.cert.update", "mode": mode}
            )
            == 1
        )
    assert (
        metrics.registry.get_sample_value(
            "lamassu_connector_events_invalid_data_total", {"event_type": "io.lamassu.cert.update", "mode": "off"}
        )
        is None
    )


def test_committed_schemas_match_the_models() -> None:
    """docs/events/ is generated: `lamassu-aws-connector events --schemas docs/events` after a model change."""
    directory = ROOT / "docs" / "events"
    expected = {f"{stem}.json": render_schema(schema) for stem, schema in json_schemas()}
    committed = {path.name: path.read_text(encoding="utf-8") for path in directory.glob("*.json")}
    assert sorted(committed) == sorted(expected), "regenerate: lamassu-aws-connector events --schemas docs/events"
    stale = [name for name, text in expected.items() if committed[name] != text]
    assert not stale, f"stale schemas {stale}: regenerate with lamassu-aws-connector events --schemas docs/events"


def test_every_catalogue_type_has_one_schema_per_direction() -> None:
    stems = [stem for stem, _ in json_schemas()]
    assert len(stems) == len(set(stems)) == len(catalogue.SPECS)


def test_events_lists_type_generation_direction_and_fields() -> None:
    out = io.StringIO()
    assert list_events(out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TYPE", "GENERATION", "DIRECTION", "FIELDS"]
    row = next(line for line in lines if line.startswith("io.lamassu.cert.update "))
    assert row.split(None, 3) == ["io.lamassu.cert.update", "v1", "command", "name, serial_number, status"]
    listed = json.loads(cli("events", "--json").stdout)
    assert {entry["type"] for entry in listed} >= {"ca.create", "dms.bind-device-id", "io.lamassuiot.ca.create"}


def _event_file(tmp_path: Path, name: str, event_type: str, data: Any) -> Path:
    path = tmp_path / name
    event = {"specversion": "1.0", "id": name, "source": "lamassu/test", "type": event_type, "data": data}
    path.write_bytes(orjson.dumps(event) + b"\n")
    return path


def test_validate_exit_codes_and_one_line_per_file(tmp_path: Path) -> None:
    revoked = {"name": "CA1", "serial_number": SERIAL, "status": "REVOKED"}
    good = _event_file(tmp_path, "good.json", "io.lamassu.cert.update", revoked)
    unknown = _event_file(tmp_path, "unknown.json", "io.example.thing", {"x": 1})
    bad_data = _event_file(tmp_path, "bad.json", "io.lamassu.cert.update", {**revoked, "status": "gone"})
    not_json = tmp_path / "broken.json"
    not_json.write_bytes(b'{"specversion": "1.0",')

    ok = cli("validate", str(good), str(unknown))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines() == [
        f"{good}: ok: io.lamassu.cert.update (v1 command)",
        f"{unknown}: ok: io.example.thing (not in the catalogue: envelope checked only)",
    ]

    out = io.StringIO()
    assert validate_files([str(good), str(bad_data), str(not_json), str(tmp_path / "missing.json")], out) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{good}: ok")
    assert lines[1].startswith(f"{bad_data}: invalid: invalid_data: data.status")
    assert lines[2].startswith(f"{not_json}: invalid: invalid_json")
    assert lines[3].startswith(f"{tmp_path / 'missing.json'}: invalid: cannot read the file")
    assert cli("validate", str(bad_data)).returncode == 1


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared Lamassu corpus is not beside this checkout")
def test_the_shared_corpus_validates() -> None:
    files = sorted(str(path) for path in CORPUS.glob("*.json"))
    out = io.StringIO()
    code = validate_files(files, out)
    assert code == 0, out.getvalue()
    assert all("not in the catalogue" not in line for line in out.getvalue().splitlines())
