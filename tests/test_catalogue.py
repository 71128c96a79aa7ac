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
from lamassu_aws_connector.config import Settings
from lamassu_aws_connector.events import CloudEvent, parse_structured
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


# --- every generation, from the project's own fixtures (tests/fixtures/lamassu/) ---------------------

FIXTURES = ROOT / "tests" / "fixtures" / "lamassu"
VALID_FIXTURES = sorted(path for path in FIXTURES.rglob("*.json") if path.parent.name != "invalid")
INVALID_FIXTURES = sorted((FIXTURES / "invalid").glob("*.json"))

# Mutated fixture -> what the rejection must name. Each is a real shape with one thing wrong.
INVALID_EXPECTED: dict[str, str] = {
    # Go's decoder refuses these: a time.Time that is not RFC 3339, a struct given as a string, a
    # field Go always writes left out, a v2.0 millisecond count given as text.
    "v3.8.0-ca.create--valid-to-not-a-time": "data.certificate.valid_to: must be an RFC 3339 timestamp",
    "v3.1.0-ca.create--key-metadata-a-string": "data.key_metadata: Input should be a valid dictionary",
    "v3.8.0-device-group.create--created-at-a-number": "data.created_at: Input should be a valid string",
    "v3.8.0-kms.create--name-missing": "data.name is missing",
    "v2.0-io.lamassuiot.ca.create--valid-to-a-string": "data.valid_to: Input should be a valid integer",
    "v3.8.0-ca.sign.signature--no-signature": "data: must come with data_base64",
    "v3.8.0-audit.ca.create--output-missing": "data.output is missing",
    "v1-io.lamassu.ca.create--not-x509": "data.cert: does not decode to an X.509 certificate",
    "v1-io.lamassu.iotcore.ca.status.update--request-status-revoked": "data.status: Input should be 'ACTIVE'",
    "v2.0-io.lamassuiot.ca.revoke--serial-not-hex": "data.serial_number: String should match pattern",
    "v2.0-io.lamassuiot.certificate.sign--ca-certificate-empty": "data.ca_certificate: does not decode to a PEM",
    "v2.0-io.lamassuiot.device.create--v3-status": "data.status: Input should be 'PENDING_PROVISIONING'",
    "v2.0-io.lamassuiot.device.forceReenroll--crt-missing": "data.crt is missing",
    "v2.0-io.lamassuiot.device.rotate--status-lower-case": "data.active_certificate.status",
    "v2.0-io.lamassuiot.dms.create--dms-missing": "data.dms is missing",
    "v2.0-io.lamassuiot.dms.update--status-active": "data.status: Input should be 'PENDING_APPROVAL'",
    "v2.4.0-ca.update.status--previous-missing": "data.previous is missing",
    "v2.4.0-certificate.update.status--not-x509": "data.updated.certificate: does not decode to an X.509",
    "v2.4.0-device.update.status--status-unknown": "data.updated.status: Input should be 'NO_IDENTITY'",
    "v2.8.0-ca.certificate.import--serial-not-hex": "data.serial_number: String should match pattern",
    "v2.8.0-ca.create--certificate-not-base64": "data.certificate: is not valid base64",
    "v2.8.0-ca.metadata.update--flat-status-missing": "data.updated.status is missing",
    "v2.8.0-dms.update--empty-id": "data.previous.id: String should have at least 1 character",
    "v3.1.0-ca.status.update--status-unknown": "data.updated.status: Input should be 'ACTIVE'",
    "v3.4.0-ca.issuance-expiration.update--previous-a-list": "data.previous: Input should be a valid dictionary",
    "v3.4.0-ca.request--status-unknown": "data.status: Input should be 'ISSUED'",
    "v3.4.0-ca.status.update--serial-with-spaces": "data.updated.serial_number: String should match pattern",
    "v3.4.0-va.crl.create--empty-this-update": "data.ThisUpdate: String should have at least 1 character",
    "v3.4.0-va.role.update--ski-missing": "data.CASubjectKeyID is missing",
    "v3.6.0-ca.request--csr-is-a-certificate": "data.csr: does not decode to a PEM CERTIFICATE REQUEST block",
    "v3.6.0-kms.import--id-missing": "data.id is missing",
    "v3.8.0-audit.ca.create--has-error-true": "data.has_error: must be false",
    "v3.8.0-audit.ca.sign.signature--has-error-zero": "data.has_error: Input should be a valid boolean",
    "v3.8.0-audit.kms.sign--input-a-string": "data.input: Input should be a valid dictionary",
    "v3.8.0-ca.create--certificate-missing": "data.certificate is missing",
    "v3.8.0-ca.create--serial-number-missing": "data.serial_number is missing",
    "v3.8.0-ca.create--status-mixed-case": "data.certificate.status: Input should be 'ACTIVE'",
    "v3.8.0-ca.create.error--output-missing": "data.output is missing",
    "v3.8.0-ca.delete--cascade-not-bool": "data.CascadeDelete: Input should be a valid boolean",
    "v3.8.0-ca.delete--json-tag-names": "data.CAID is missing",
    "v3.8.0-ca.profile.update--serial-dash": "data.updated.certificate.serial_number: String should match",
    "v3.8.0-ca.reissue--flat-shape": "data.updated.certificate: Input should be a valid dictionary",
    "v3.8.0-ca.sign.signature--data-instead-of-data-base64": "data: must be absent",
    "v3.8.0-certificate.delete--serial-with-spaces": "data.SerialNumber: String should match pattern",
    "v3.8.0-certificate.import--issuer-serial-word": "data.issuer_metadata.serial_number",
    "v3.8.0-certificate.metadata.update--not-x509": "data.updated.certificate: does not decode to an X.509",
    "v3.8.0-certificate.status.update--status-title-case": "data.updated.status: Input should be 'ACTIVE'",
    "v3.8.0-device-group.create--id-missing": "data.id is missing",
    "v3.8.0-device-group.delete--empty-object": "data.ID is missing",
    "v3.8.0-device.delete--empty-id": "data.ID: String should have at least 1 character",
    "v3.8.0-dms.bind-device-id--device-status-lower-case": "data.device.status",
    "v3.8.0-dms.delete--json-tag-name": "data.ID is missing",
    "v3.8.0-dms.enroll--csr-not-certificate": "data.certificate: does not decode to a PEM CERTIFICATE block",
    "v3.8.0-dms.reenroll--aps-missing": "data.aps is missing",
    "v3.8.0-kms.create--empty-key-id": "data.key_id: String should have at least 1 character",
    "v3.8.0-kms.delete--empty-identifier": "data.Identifier: String should have at least 1 character",
    "v3.8.0-kms.name.update--updated-missing": "data.updated is missing",
    "v3.8.0-kms.sign--signature-not-base64": "data.signature: is not valid base64",
    "v3.8.0-kms.sign.error--output-an-object": "data.output: Input should be a valid string",
    "v3.8.0-kms.verify--valid-a-string": "data.valid: Input should be a valid boolean",
    "v3.8.0-profile.issuance.create--not-an-object": "data: Input should be a valid dictionary",
    "v3.8.0-profile.issuance.delete--json-tag-name": "data.ProfileID is missing",
    "v3.8.0-va.role.crl.create--next-update-missing": "data.NextUpdate is missing",
    "v3.8.0-va.role.update--empty-ski": "data.ca_ski: String should have at least 1 character",
}

# core/pkg/models/events.go at v3.8.0: every EventType constant.
LAMASSU_V38_CONSTANTS = [
    "ca.create",
    "ca.request",
    "ca.import",
    "ca.certificate.import",
    "ca.profile.update",
    "ca.status.update",
    "ca.metadata.update",
    "ca.reissue",
    "ca.sign.certificate",
    "ca.sign.signature",
    "ca.delete",
    "kms.create",
    "kms.import",
    "kms.metadata.update",
    "kms.aliases.update",
    "kms.name.update",
    "kms.tags.update",
    "kms.delete",
    "kms.sign",
    "kms.verify",
    "profile.issuance.create",
    "profile.issuance.update",
    "profile.issuance.delete",
    "certificate.create",
    "certificate.import",
    "certificate.status.update",
    "certificate.metadata.update",
    "certificate.delete",
    "dms.create",
    "dms.update",
    "dms.metadata.update",
    "dms.delete",
    "dms.enroll",
    "dms.reenroll",
    "dms.bind-device-id",
    "device.create",
    "device.identity.update",
    "device.status.update",
    "device.metadata.update",
    "device.delete",
    "device-group.create",
    "device-group.update",
    "device-group.delete",
    "va.role.update",
    "va.role.crl.init",
    "va.role.crl.create",
    "any",
]


def _event_of(path: Path) -> Any:
    return parse_structured(path.read_bytes(), repair_missing_id=False).event


def test_the_fixtures_cover_every_type_of_every_generation() -> None:
    assert len(VALID_FIXTURES) >= 170 and len(INVALID_FIXTURES) >= 50
    seen = {_event_of(path).type for path in VALID_FIXTURES}
    catalogued = {spec.event_type for spec in catalogue.SPECS if spec.kind is catalogue.EventKind.EVENT}
    assert catalogued - seen == set(), "every catalogue type needs a fixture"
    assert {t for t in seen if t.startswith("audit.")} and {t for t in seen if t.endswith(".error")}
    folders = {path.parent.name for path in VALID_FIXTURES}
    assert folders == {"v1", "v2.0", "v2.4.0", "v2.8.0", "v3.1.0", "v3.4.0", "v3.6.0", "v3.8.0"}


def test_validate_accepts_every_fixture_of_every_generation() -> None:
    result = cli("validate", *(str(path) for path in VALID_FIXTURES))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(VALID_FIXTURES)
    assert all(": ok: " in line and "not in the catalogue" not in line for line in lines), result.stdout


def test_validate_rejects_every_mutated_fixture_naming_the_field() -> None:
    assert sorted(path.stem for path in INVALID_FIXTURES) == sorted(INVALID_EXPECTED)
    result = cli("validate", *(str(path) for path in INVALID_FIXTURES))
    assert result.returncode == 1
    verdicts = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    for path in INVALID_FIXTURES:
        verdict = verdicts[str(path)]
        assert verdict.startswith("invalid: invalid_data: "), f"{path.name}: {verdict}"
        assert INVALID_EXPECTED[path.stem] in verdict, f"{path.name}: {verdict}"
        assert "shape " not in verdict  # shape tags never leak into the field path


def test_the_v38_event_types_are_all_catalogued_or_known_unpublished() -> None:
    assert len(LAMASSU_V38_CONSTANTS) == 47
    catalogued = {spec.event_type for spec in catalogue.SPECS if spec.generation is catalogue.Generation.V3}
    unpublished_at_head = {"any", "ca.request", "ca.certificate.import"}
    assert set(LAMASSU_V38_CONSTANTS) - catalogued == {"any"}
    assert unpublished_at_head <= set(catalogue.DECLARED_NOT_PUBLISHED)
    assert len(set(LAMASSU_V38_CONSTANTS) - unpublished_at_head) == 44
    for name in ("ca.request", "ca.certificate.import"):  # published by older releases only
        (spec,) = catalogue.specs_for(name)
        assert spec.until is not None


def test_every_generation_has_its_types() -> None:
    by_generation: dict[catalogue.Generation, set[str]] = {}
    for spec in catalogue.SPECS:
        by_generation.setdefault(spec.generation, set()).add(spec.event_type)
    assert len(by_generation[catalogue.Generation.V2_0]) == 18
    assert by_generation[catalogue.Generation.V2_4] == {
        "ca.update.status",
        "ca.update.metadata",
        "certificate.update.status",
        "certificate.update.metadata",
        "device.update.identity",
        "device.update.status",
        "device.update.metadata",
        "dms.update.metadata",
    }
    for spec in catalogue.SPECS:
        if spec.generation in (catalogue.Generation.V2_4, catalogue.Generation.V3):
            assert spec.since is not None and spec.releases is not None, spec.event_type


@pytest.mark.parametrize("path", VALID_FIXTURES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_warn_mode_raises_no_warning_on_real_shapes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append((event, fields))

    monkeypatch.setattr(catalogue, "log", Recorder())
    metrics = Metrics()
    event = _event_of(path)
    direction = Direction.REPLY if event.source.startswith(("aws", "cloud")) else Direction.COMMAND
    assert check_data(event.type, event.data, direction) is None
    if direction is Direction.COMMAND:  # the outbound flow only ever sees Lamassu's side
        assert DataCheck("warn", metrics).rejection(event, {}) is None
        assert DataCheck("enforce", metrics).rejection(event, {}) is None
    assert warnings == []
    assert (
        metrics.registry.get_sample_value(
            "lamassu_connector_events_invalid_data_total", {"event_type": event.type, "mode": "warn"}
        )
        is None
    )


@pytest.mark.parametrize("path", INVALID_FIXTURES, ids=lambda path: path.stem)
def test_enforce_dead_letters_and_warn_forwards_the_mutated_fixtures(path: Path) -> None:
    event = _event_of(path)
    metrics = Metrics()
    direction = Direction.REPLY if event.source.startswith(("aws", "cloud")) else Direction.COMMAND
    if direction is Direction.REPLY:
        assert check_data(event.type, event.data, direction) is not None
        return
    reason = DataCheck("enforce", metrics).rejection(event, {})
    assert reason is not None and INVALID_EXPECTED[path.stem] in reason
    assert DataCheck("warn", metrics).rejection(event, {}) is None
    for mode in ("warn", "enforce"):
        assert (
            metrics.registry.get_sample_value(
                "lamassu_connector_events_invalid_data_total", {"event_type": event.type, "mode": mode}
            )
            == 1
        )


# --- shapes that changed between releases ---------------------------------------------------------


def _fixture_data(rel: str) -> Any:
    return _event_of(FIXTURES / rel).data


def test_a_ca_is_accepted_flat_up_to_v31_and_nested_from_v32() -> None:
    flat, nested = _fixture_data("v3.1.0/ca.create.json"), _fixture_data("v3.8.0/ca.create.json")
    assert isinstance(flat["certificate"], str) and isinstance(nested["certificate"], dict)
    for event_type in ("ca.create", "ca.import"):
        assert check_data(event_type, flat) is None
        assert check_data(event_type, nested) is None
    # each shape is checked as itself: a flat CA needs its top-level status, a nested one its object
    flat_without_status = {key: value for key, value in flat.items() if key != "status"}
    assert check_data("ca.create", flat_without_status) == "data.status is missing"
    assert check_data("ca.create", {**nested, "certificate": None}) is not None
    # an update may even straddle an upgrade (previous stored flat, updated nested): each side alone
    assert check_data("ca.status.update", {"previous": flat, "updated": nested}) is None
    # CA types born after v3.2 accept only the nested shape
    assert check_data("ca.reissue", {"previous": nested, "updated": nested}) is None
    assert check_data("ca.reissue", {"previous": flat, "updated": nested}) is not None


def test_kms_and_va_shapes_of_each_release() -> None:
    assert check_data("kms.create", _fixture_data("v3.6.0/kms.create.json")) is None  # id
    assert check_data("kms.create", _fixture_data("v3.8.0/kms.create.json")) is None  # key_id
    assert check_data("kms.delete", {"ID": "k-1"}) is None  # v3.6 GetByIDInput
    assert check_data("kms.delete", {"Identifier": "k-1"}) is None  # v3.7+ GetKeyInput
    assert check_data("kms.delete", {"identifier": "k-1"}) == "data.Identifier is missing"
    assert check_data("va.role.update", _fixture_data("v3.4.0/va.role.update.json")) is None  # Go field names
    assert check_data("va.role.update", _fixture_data("v3.8.0/va.role.update.json")) is None  # ca_ski


def test_serial_numbers_of_every_release_and_the_unknown_issuer() -> None:
    certificate = _fixture_data("v3.8.0/certificate.create.json")
    for serial in ("7d-a2-8e", "7da28e", "7DA28E", "0a:1b"):
        assert check_data("certificate.create", {**certificate, "serial_number": serial}) is None
    # an imported certificate whose issuer is not in Lamassu: issuer_metadata.serial_number "-"
    imported = _fixture_data("v3.8.0/certificate.import.json")
    assert imported["issuer_metadata"] == {"serial_number": "-", "id": "-", "level": -1}
    assert check_data("certificate.import", imported) is None
    # ... but "-" never names a certificate itself
    problem = check_data("certificate.create", {**certificate, "serial_number": "-"})
    assert problem is not None and problem.startswith("data.serial_number")


def test_the_signature_travels_in_data_base64() -> None:
    event = _event_of(FIXTURES / "v3.8.0" / "ca.sign.signature.json")
    assert event.data is None and event.data_base64
    assert check_data("ca.sign.signature", event.data) is None
    assert check_data("ca.sign.signature", {"signature": event.data_base64}) is not None


def test_new_certificate_fields_are_checked_for_shape_without_an_x509_parse() -> None:
    catalogue._certificate_problem.cache_clear()
    assert check_data("dms.enroll", _fixture_data("v3.8.0/dms.enroll.json")) is None
    assert catalogue._certificate_problem.cache_info().misses == 0  # no X.509 parse on the enroll path
    # ... while the certificate fields checked before keep their X.509 parse
    assert check_data("certificate.create", _fixture_data("v3.8.0/certificate.create.json")) is None
    assert catalogue._certificate_problem.cache_info().misses == 1


# --- audit copies, error records and the outbound policy's inputs --------------------------------


def test_event_kind_names_audit_copies_and_error_records() -> None:
    kind = catalogue.event_kind
    assert kind("ca.create") is catalogue.EventKind.EVENT
    assert kind("io.lamassu.iotcore.config.response") is catalogue.EventKind.EVENT
    assert kind("audit.ca.create") is catalogue.EventKind.AUDIT
    assert kind("audit.ca.certificate.import") is catalogue.EventKind.AUDIT  # an audit-only action name
    assert kind("audit.kms.future.action") is catalogue.EventKind.AUDIT  # any Lamassu action, also newer ones
    assert kind("ca.create.error") is catalogue.EventKind.ERROR
    assert kind("kms.sign.error") is catalogue.EventKind.ERROR
    for other in ("io.example.thing", "audit.something.else", "device.error", "error", "audit."):
        assert kind(other) is catalogue.EventKind.UNKNOWN, other
    assert catalogue.action_of("audit.ca.sign.signature") == "ca.sign.signature"
    assert catalogue.action_of("kms.sign.error") == "kms.sign"
    assert catalogue.action_of("ca.create") == "ca.create"
    assert {spec.event_type for spec in catalogue.SPECS} >= catalogue.AUDITED_ACTIONS


def test_audit_and_error_envelopes() -> None:
    audit = {"input": {"CAID": "ca-1", "CascadeDelete": False}, "has_error": False, "output": {}}
    assert check_data("audit.ca.delete", audit) is None
    assert check_data("audit.certificate.delete", {**audit, "output": None}) is None
    assert check_data("audit.ca.delete", {**audit, "has_error": True}) == "data.has_error: must be false (got True)"
    failed = {"input": {"CAID": "ca-1"}, "has_error": True, "output": "ca not found"}
    assert check_data("ca.delete.error", failed) is None
    assert check_data("ca.delete.error", {**failed, "has_error": False}) == "data.has_error: must be true (got False)"
    assert check_data("ca.delete.error", audit) is not None
    assert check_data("io.example.audit", {"anything": 1}) is None  # unknown types still pass


def test_unknown_types_are_resolved_once_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "_RESOLVED", {})
    monkeypatch.setattr(catalogue, "_CACHE_LIMIT", 3)
    for index in range(10):
        assert catalogue.event_kind(f"io.example.type{index}") is catalogue.EventKind.UNKNOWN
    assert len(catalogue._RESOLVED) == 3


def test_listing_rows_carry_generation_releases_and_kind() -> None:
    rows = {row["type"]: row for row in (spec.listing() for spec in catalogue.SPECS)}
    assert rows["ca.profile.update"] | {"fields": None} == {
        "type": "ca.profile.update",
        "generation": "v2.4+/v3",
        "releases": "v3.5.0+",
        "direction": "command",
        "kind": "event",
        "fields": None,
        "shapes": [],
        "answers": None,
        "summary": "a CA's issuance profile changed",
        "note": None,
    }
    assert rows["ca.update.status"]["releases"] == "v2.4.0-v2.5.0"
    # Where a shape changed between releases, the listing says which shape belongs to which releases.
    assert [(v["at"], v["shape"]) for v in rows["ca.status.update"]["shapes"]] == [
        ("data.previous", "v3.2+"),
        ("data.previous", "v2.4-v3.1"),
        ("data.updated", "v3.2+"),
        ("data.updated", "v2.4-v3.1"),
    ]
    assert [v["shape"] for v in rows["ca.update.status"]["shapes"]] == ["v2.4-v3.1", "v2.4-v3.1"]  # gone by v3.2
    assert [v["model"] for v in rows["kms.create"]["shapes"]] == ["KmsKeyV37", "KmsKeyV36"]
    assert rows["device.create"]["shapes"] == []
    assert rows["audit.*"]["kind"] == "audit" and rows["*.error"]["kind"] == "error"
    assert "private key" in (rows["io.lamassuiot.dms.create"]["note"] or "")
    listed = json.loads(cli("events", "--json").stdout)
    assert {entry["type"] for entry in listed} == {spec.event_type for spec in catalogue.SPECS}
    assert {entry["generation"] for entry in listed} == {generation.value for generation in catalogue.Generation}


def test_the_generations_doc_names_every_type() -> None:
    text = (ROOT / "docs" / "lamassu-generations.md").read_text(encoding="utf-8")
    missing = [spec.event_type for spec in catalogue.SPECS if f"`{spec.event_type}`" not in text]
    assert not missing, f"docs/lamassu-generations.md does not mention {missing}"
    for name in catalogue.DECLARED_NOT_PUBLISHED:
        assert f"`{name}`" in text


def test_known_types_are_a_bounded_set_for_metric_labels() -> None:
    assert catalogue.is_known("ca.create") and catalogue.is_known("io.lamassu.iotcore.config.response")
    assert catalogue.is_known("audit.ca.sign.certificate") and catalogue.is_known("kms.sign.error")
    assert not catalogue.is_known("audit.ca.made-up-action") and not catalogue.is_known("ca.made-up.error")
    assert not catalogue.is_known("io.example.thing")
    metrics = Metrics()
    odd = parse_structured(
        orjson.dumps(
            {"specversion": "1.0", "id": "1", "source": "s", "type": "audit.ca.made-up-action", "data": {"x": 1}}
        )
    ).event
    assert DataCheck("enforce", metrics).rejection(odd, {}) is not None  # checked like every audit copy
    assert (
        metrics.registry.get_sample_value(
            "lamassu_connector_events_invalid_data_total", {"event_type": "audit.*", "mode": "enforce"}
        )
        == 1
    )


def test_certificates_are_parsed_only_when_asked() -> None:
    """validation.certificates: shape keeps the X.509 parse off the daemon's hot path; x509 (and the
    validate tool, and check_data's default) parse."""
    bad = json.loads((FIXTURES / "invalid" / "v3.8.0-certificate.metadata.update--not-x509.json").read_text())
    data = bad["data"]
    catalogue._certificate_problem.cache_clear()
    assert check_data(bad["type"], data, parse_certificates=False) is None  # base64 of a PEM block: the shape holds
    assert catalogue._certificate_problem.cache_info().misses == 0
    assert "does not decode to an X.509" in (check_data(bad["type"], data) or "")
    not_base64 = {**data, "updated": {**data["updated"], "certificate": "not base64!"}}
    assert "is not valid base64" in (check_data(bad["type"], not_base64, parse_certificates=False) or "")
    event = CloudEvent.model_validate(bad)
    metrics = Metrics()
    assert DataCheck("enforce", metrics, parse_certificates=False).rejection(event, {}) is None
    assert DataCheck("enforce", metrics, parse_certificates=True).rejection(event, {}) is not None
    assert Settings().validation.certificates == "shape"


def test_an_audit_copy_output_is_checked_as_the_entity_the_action_returned() -> None:
    fixtures = ROOT / "tests" / "fixtures" / "lamassu" / "v3.8.0"
    created = orjson.loads((fixtures / "audit.ca.create.json").read_bytes())
    assert check_data(created["type"], created["data"]) is None
    missing = copy.deepcopy(created["data"])
    del missing["output"]["certificate"]
    assert check_data("audit.ca.create", missing) == "data.output.certificate is missing"
    # An update's audit copy carries the updated entity alone (the event carries {previous, updated}).
    status = orjson.loads((fixtures / "audit.certificate.status.update.json").read_bytes())
    assert "previous" not in status["data"]["output"] and check_data(status["type"], status["data"]) is None
    broken = copy.deepcopy(status["data"])
    broken["output"]["status"] = "GONE"
    assert (check_data(status["type"], broken) or "").startswith("data.output.status:")
    # Outputs that are no entity are not checked: a delete's {}, a signature's bytes.
    for name in ("audit.ca.delete.json", "audit.ca.sign.signature.json", "audit.kms.sign.json"):
        record = orjson.loads((fixtures / name).read_bytes())
        assert check_data(record["type"], record["data"]) is None, name


def test_validate_names_the_release_shape_and_the_kind() -> None:
    fixtures = ROOT / "tests" / "fixtures" / "lamassu"
    lines = cli(
        "validate",
        str(fixtures / "v3.1.0" / "ca.create.json"),
        str(fixtures / "v3.8.0" / "ca.status.update.json"),
        str(fixtures / "v3.8.0" / "audit.ca.create.json"),
        str(fixtures / "v3.8.0" / "ca.create.error.json"),
    ).stdout.splitlines()
    assert lines[0].endswith("ok: ca.create (v2.4+/v3 command; shape v2.4-v3.1)")
    assert lines[1].endswith("ok: ca.status.update (v2.4+/v3 command; shape v3.2+)")
    assert lines[2].endswith("ok: audit.ca.create (v2.4+/v3 audit copy)")
    assert lines[3].endswith("ok: ca.create.error (v2.4+/v3 error record)")


@pytest.mark.parametrize(
    ("fixture", "path", "value"),
    [
        ("kms.create", ("size",), "256"),  # Go's decoder refuses a string for an int
        ("kms.create", ("size",), 256.0),  # ... and a float
        ("kms.create", ("has_private_key",), "true"),
        ("kms.create", ("has_private_key",), 1),
        ("ca.create", ("level",), "0"),
        ("ca.create", ("certificate", "certificate"), None),  # a certificate Lamassu holds has its PEM
        ("device-group.create", ("criteria", 0, "operand"), "eq"),  # resources.FilterOperation is an int
    ],
)
def test_go_typed_fields_take_what_go_would_write(fixture: str, path: tuple[Any, ...], value: Any) -> None:
    data = orjson.loads((ROOT / "tests" / "fixtures" / "lamassu" / "v3.8.0" / f"{fixture}.json").read_bytes())["data"]
    assert check_data(fixture, data) is None
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problem = check_data(fixture, data)
    assert problem is not None and ".".join(map(str, path)) in problem, problem
