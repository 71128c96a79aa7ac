"""The Lamassu event catalogue: every CloudEvent type Lamassu publishes, and the shape of its ``data``.

Grouped by Lamassu generation (docs/lamassu-generations.md has the full table):

* **v1** (2022): ``io.lamassu.*`` published by lamassu-ca on the default exchange, and the AWS IoT Core
  request/reply types ``io.lamassu.iotcore.*`` that the Lambdas of the original aws-connector consume
  (commands) and emit (replies);
* **v2.0** (2023-01): 18 ``io.lamassuiot.*`` types on the topic exchange ``lamassu``;
* **v2.4.0-v2.5.0**: the first short names on ``lamassu-events`` that v2.5.1 renamed
  (``ca.update.status`` -> ``ca.status.update``, ...);
* **v2.4+/v3** (2023-12 onwards): the short names in use today (``ca.create``,
  ``certificate.status.update``, ``kms.sign``, ``device-group.create``, ...), each with the first and
  last Lamassu release that publishes it; updates carry ``{"previous": ..., "updated": ...}``, deletes
  the service's input struct with Go field names (``{"CAID", "CascadeDelete"}``). Where a shape
  changed between releases the model accepts every real shape: a CA is flat (``certificate`` a base64
  PEM string, ``status`` at top level) up to v3.1 and nested (``certificate`` an object) from v3.2.0;
  a KMS key has ``id`` in v3.6 and ``key_id`` from v3.7.0; a VA role has Go field names in v3.3-v3.4.
  Since v3.5.0 the CA and KMS services also publish an audit copy ``audit.<type>`` of each action
  and ``<type>.error`` when it fails: two families with one envelope each (:func:`event_kind`).

The models are tolerant where Lamassu is loose (extra fields are kept, fields Lamassu omits in
some version are optional) and strict where a wrong value would mislead AWS: status enums, the
serial-number format, and certificate fields. The certificate of a CA or certificate (either CA
shape) and the v1/v2.0 certificate fields the catalogue always parsed must decode to an X.509
certificate (parsed once, cached) when the check is asked to parse (``check_data(...,
parse_certificates=True)``, the default; the daemon asks per ``validation.certificates``, which by
default keeps the X.509 parse off its hot path); otherwise, and always for the certificate fields
of the types added with Lamassu v3.8 support (enrollments, v2.0 signing and device events), they
are checked for shape only (base64 of a PEM ``CERTIFICATE`` block). Shapes were learnt from the
public lamassuiot repositories at their release tags; each model's docstring names its source files.
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Strict,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .config import models_in
from .events import CloudEvent, check_rfc3339
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)


class Generation(StrEnum):
    V1 = "v1"
    V2_0 = "v2.0"
    V2_4 = "v2.4.0-v2.5.0"  # names renamed in v2.5.1
    V3 = "v2.4+/v3"  # the short names on lamassu-events in use today (some since v2.4.0)


class Direction(StrEnum):
    COMMAND = "command"  # Lamassu -> RabbitMQ -> SQS lamassu-command
    REPLY = "reply"  # SQS lamassu-response (AWS Lambdas) -> RabbitMQ


class EventKind(StrEnum):
    """What an event type is, for the outbound flow's forwarding policy."""

    EVENT = "event"  # a catalogue type: something happened in Lamassu (or a v1 request / AWS reply)
    AUDIT = "audit"  # audit.<type>: the CA/KMS services' audit copy of a successful action (v3.5.0+)
    ERROR = "error"  # <type>.error: the CA/KMS services' record of a failed action (v3.5.0+)
    UNKNOWN = "unknown"  # not Lamassu's, or newer than this catalogue: forwarded as before


# Lamassu writes serial numbers as hex byte pairs joined by "-" (v1: also ":") up to v3.4, as plain
# lower-case hex since v3.5.0; the earliest v1 Lambdas wrote plain hex too. Anything else would name
# the wrong certificate in AWS IoT.
_SERIAL = r"(?:[0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2})*|[0-9a-fA-F]+)"
_SERIAL_PATTERN = rf"^{_SERIAL}$"
SerialNumber = Annotated[str, StringConstraints(pattern=_SERIAL_PATTERN)]
# issuer_metadata.serial_number is "-" when the issuer of an imported certificate is not in Lamassu.
IssuerSerialNumber = Annotated[str, StringConstraints(pattern=rf"^(?:{_SERIAL}|-)$")]
# v2.0: a DMS still waiting for approval has no certificate, hence serial_number "".
SerialNumberOrEmpty = Annotated[str, StringConstraints(pattern=rf"^(?:{_SERIAL})?$")]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
GoString = Annotated[str, Strict()]  # a Go string field: a JSON string, never a number or an object
# Go's time.Time: encoding/json writes RFC 3339 (nanoseconds, offset) and its decoder refuses anything else.
GoTime = Annotated[
    str, Strict(), AfterValidator(check_rfc3339), WithJsonSchema({"type": "string", "format": "date-time"})
]
StrictFlag = Annotated[bool, Strict()]  # true or false only: not 0, 1, "yes"
# Go's encoding/json writes an int as a JSON integer and refuses "256" or 256.0 for one: so do we.
GoInt = Annotated[int, Strict()]


def _must_be(expected: bool) -> Callable[[bool], bool]:
    def check(value: bool) -> bool:
        if value is not expected:
            raise ValueError(f"must be {str(expected).lower()}")
        return value

    return check


FalseFlag = Annotated[
    bool, Strict(), AfterValidator(_must_be(False)), WithJsonSchema({"type": "boolean", "const": False})
]
TrueFlag = Annotated[bool, Strict(), AfterValidator(_must_be(True)), WithJsonSchema({"type": "boolean", "const": True})]


# Validation-context key: False keeps the X.509 parse of Base64PemCertificate fields off (shape only).
_PARSE_CERTIFICATES = "parse_certificates"
# Validation-context key: whether the event carries data_base64 (a model of binary data requires it).
_HAS_DATA_BASE64 = "has_data_base64"


@functools.lru_cache(maxsize=512)
def _certificate_problem(value: str) -> str | None:
    """Why a base64 PEM string is not an X.509 certificate, or None. Cached: v3 updates repeat it."""
    try:
        pem = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64"
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return "does not decode to a PEM certificate (no BEGIN CERTIFICATE line)"
    # Imported here so that merely listing the catalogue does not load OpenSSL.
    from cryptography import x509  # noqa: PLC0415

    try:
        x509.load_pem_x509_certificate(pem)
    except Exception as exc:  # any parser failure is a verdict on the data, never a connector error
        detail = str(exc).split(". See ", 1)[0]  # drop OpenSSL's FAQ link
        return f"does not decode to an X.509 certificate ({detail})"
    return None


def _x509_base64_pem(value: str, info: ValidationInfo) -> str:
    context = info.context
    if isinstance(context, dict) and context.get(_PARSE_CERTIFICATES) is False:
        return _base64_pem_shape(value)
    problem = _certificate_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _pem_block_problem(value: str, label: bytes) -> str | None:
    """Why ``value`` is not base64 of a PEM block with ``label``, without parsing what it holds (cheap)."""
    try:
        pem = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        return "is not valid base64"
    if not pem.lstrip().startswith(b"-----BEGIN " + label + b"-----"):
        return f"does not decode to a PEM {label.decode()} block"
    return None


def _base64_pem_shape(value: str) -> str:
    problem = _pem_block_problem(value, b"CERTIFICATE")
    if problem is not None:
        raise ValueError(problem)
    return value


def _base64_csr_shape(value: str) -> str:
    problem = _pem_block_problem(value, b"CERTIFICATE REQUEST")
    if problem is not None:
        raise ValueError(problem)
    return value


def _base64(value: str) -> str:
    try:
        binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    return value


_CERTIFICATE_SCHEMA = {
    "type": "string",
    "contentEncoding": "base64",
    "contentMediaType": "application/x-pem-file",
    "description": "base64 of a PEM 'BEGIN CERTIFICATE' block holding one X.509 certificate",
}

# Decoded and parsed as X.509 (cached): the certificate of a CA or certificate, and the v1/v2.0 fields
# that the catalogue has always parsed.
Base64PemCertificate = Annotated[str, AfterValidator(_x509_base64_pem), WithJsonSchema(_CERTIFICATE_SCHEMA)]
# Base64 of a PEM CERTIFICATE block, not parsed: the certificate fields of the types added with
# Lamassu v3.8 support (enrollments, the v2.0 signing and device events): no X.509 parse on that path.
Base64PemShape = Annotated[str, AfterValidator(_base64_pem_shape), WithJsonSchema(_CERTIFICATE_SCHEMA)]
Base64PemCsr = Annotated[
    str,
    AfterValidator(_base64_csr_shape),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "application/x-pem-file",
            "description": "base64 of a PEM 'BEGIN CERTIFICATE REQUEST' block",
        }
    ),
]
Base64 = Annotated[str, AfterValidator(_base64), WithJsonSchema({"type": "string", "contentEncoding": "base64"})]

# Status vocabularies. Lamassu's own enums are upper case in every generation.
V1Status = Literal["ACTIVE", "ISSUED", "REVOKED", "EXPIRED", "INACTIVE"]
V2CertificateStatus = Literal["ACTIVE", "ABOUT_TO_EXPIRE", "EXPIRED", "REVOKED", "INACTIVE"]
V2DeviceStatus = Literal[
    "PENDING_PROVISIONING", "FULLY_PROVISIONED", "REQUIRES_ACTION", "PROVISIONED_WITH_WARNINGS", "DECOMMISSIONED"
]
V2DmsStatus = Literal["PENDING_APPROVAL", "REJECTED", "APPROVED", "EXPIRED", "REVOKED"]
V3CertificateStatus = Literal["ACTIVE", "EXPIRED", "REVOKED", "INACTIVE"]  # INACTIVE since v3.2.0
V3DeviceStatus = Literal[
    "NO_IDENTITY", "ACTIVE", "RENEWAL_PENDING", "EXPIRING_SOON", "EXPIRED", "REVOKED", "DECOMMISSIONED"
]
CertificateRequestStatus = Literal["ISSUED", "REVOKED", "PENDING"]
AwsCaStatus = Literal["ACTIVE", "INACTIVE", "PENDING_TRANSFER"]
AwsCertificateStatus = Literal[
    "ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"
]


class _Data(BaseModel):
    # Lamassu adds fields between releases: keep them, check only what the AWS side relies on.
    # Validators are built on first use (defer_build): a connector meets a few of the 96 types,
    # and building them all cost ≈ 25 ms of CPU at every start.
    model_config = ConfigDict(extra="allow", defer_build=True)


_Root = TypeVar("_Root")


class _RootData(RootModel[_Root], Generic[_Root]):
    """A whole ``data`` that is not one object of fields (a union of shapes, a list, null): built on
    first use too (``RootModel[...]`` itself would build its validator at import)."""

    model_config = ConfigDict(defer_build=True)


# A model that accepts several shapes picks one by a look at the data (cheap) and reports the errors
# of that shape only. Its tags start with "shape " and never appear in an error's field path.
_SHAPE_TAG_PREFIX = "shape "


def _shape_of(pick: Callable[[dict[str, Any]], str], newest: str) -> Discriminator:
    """A discriminator choosing a shape by ``pick(data)``; anything but an object gets the newest shape,
    whose errors then say what was expected."""

    def discriminate(value: Any) -> str:
        return _SHAPE_TAG_PREFIX + (pick(value) if isinstance(value, dict) else newest)

    return Discriminator(discriminate)


# --- v1 (2022) --------------------------------------------------------------------------------


class V1CaCreated(_Data):
    """``io.lamassu.ca.create`` / ``io.lamassu.ca.import``: a CA to register in AWS IoT.

    Source: lamassuiot-attic/lamassu-ca pkg/server/api/service/amqp_middleware.go (CreateCAEvent,
    ImportCAEvent: name, serial_number, cert = base64 PEM).
    """

    name: NonEmpty
    serial_number: SerialNumber
    cert: Base64PemCertificate


class V1CaUpdated(_Data):
    """``io.lamassu.ca.update``: a CA was revoked (DeleteCA). Early builds sent only ``name``.

    Source: lamassuiot-attic/lamassu-ca pkg/server/api/service/amqp_middleware.go (DeleteCAEvent);
    lamassuiot/lamassu-aws-connector docs/cloud_events/cloud_events.md (with status REVOKED).
    """

    name: NonEmpty
    status: V1Status | None = None


class V1CertUpdated(_Data):
    """``io.lamassu.cert.update``: a certificate was revoked (DeleteCert, status REVOKED).

    Source: lamassuiot-attic/lamassu-ca pkg/server/api/service/amqp_middleware.go (DeleteCertEvent).
    """

    name: NonEmpty
    serial_number: SerialNumber
    status: V1Status


class IotConfigRequest(_Data):
    """``io.lamassu.iotcore.config.request``: ask the Lambda for the AWS IoT Core configuration; data ``{}``.

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchGetConfiguration).
    """


class IotThingConfigRequest(_Data):
    """``io.lamassu.iotcore.thing.config.request``: ask for one thing's AWS IoT configuration.

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchGetThingConfiguration).
    """

    device_id: NonEmpty


class IotCaRegistrationRequest(_Data):
    """``io.lamassu.iotcore.ca.registration.request-code`` (early: ``...registration.init``).

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchRegistrationCodeRequest).
    """

    ca_cert: Base64PemCertificate
    ca_name: NonEmpty
    serial_number: SerialNumber


class IotCaRegistrationSigned(IotCaRegistrationRequest):
    """``io.lamassu.iotcore.ca.registration.signed-code`` (early: ``...signed_challenge``).

    The verification certificate proves possession of the CA key to AWS IoT.
    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go.
    """

    verification_cert: Base64PemCertificate


class IotCaPolicyAttach(_Data):
    """``io.lamassu.iotcore.ca.policy.attach``: ``policy`` is an IAM-style policy as a JSON *string*.

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchAttachIoTCorePolicy).
    """

    ca_name: NonEmpty
    serial_number: SerialNumber
    policy: str

    @field_validator("policy")
    @classmethod
    def _policy_is_json_object(cls, value: str) -> str:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError("must be a policy document encoded as a JSON string") from None
        if not isinstance(parsed, dict):
            raise ValueError("must encode a JSON object (a policy document)")
        return value


class IotCaStatusCommand(_Data):
    """``io.lamassu.iotcore.ca.status.update`` (command): set a CA's status in AWS IoT (REVOKED maps to INACTIVE).

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchUpdateCAStatusRequest).
    """

    certificate_id: NonEmpty
    status: AwsCaStatus


class IotCertStatusCommand(_Data):
    """``io.lamassu.iotcore.cert.status.update`` (command): set a device certificate's status in AWS IoT.

    Source: lamassuiot/lamassu-aws-connector aws-connector/pkg/server/api/service/service.go
    (DispatchUpdateCertStatusRequest) and pkg/models/models.go (CertUpdateStatus).
    """

    serial_number: SerialNumber
    device_id: NonEmpty
    status: AwsCertificateStatus
    device_cert: Base64PemCertificate | None = None
    ca_cert: Base64PemCertificate | None = None


class RegisteredCa(_Data):
    name: NonEmpty
    id: str | None = None
    arn: str | None = None
    status: AwsCaStatus | None = None


class IotConfigResponse(_Data):
    """``io.lamassu.iotcore.config.response``: the AWS IoT Core endpoint, account and registered CAs.

    Source: lamassuiot/lamassu-aws-connector aws-cdk/resources/lambda-get-iotcore-configuration/index.ts.
    """

    iot_core_endpoint: NonEmpty
    account_id: NonEmpty
    registered_cas: list[RegisteredCa] | None = None


class ThingCertificate(_Data):
    id: str | None = None
    arn: str | None = None
    status: AwsCertificateStatus
    serial_number: SerialNumber | None = None


class ThingConfig(_Data):
    aws_id: str | None = None
    device_id: str | None = None
    certificates: list[ThingCertificate] | None = None


class ThingConfigReply(_Data):
    device_id: NonEmpty
    status: int | None = None  # an HTTP-like code: 200 with config, 404 without
    config: ThingConfig | None = None


class IotThingConfigResponse(_RootData[ThingConfigReply | list[ThingConfig]]):
    """``io.lamassu.iotcore.thing.config.response``: one thing's AWS IoT configuration (older Lambdas: a list).

    Source: lamassuiot/lamassu-aws-connector aws-cdk/resources/lambda-get-iotcore-thing-configuration/index.ts;
    the array form in docs/cloud_events/cloud_events.md.
    """


class IotCaRegistrationCode(_Data):
    """``io.lamassu.iotcore.ca.registration.response-code`` (early: ``...reg-code``): the code to sign.

    Source: lamassuiot/lamassu-aws-connector aws-cdk/resources/lambda-generate-iotcore-ca-registrationcode/index.ts.
    """

    ca_name: NonEmpty
    registration_code: NonEmpty
    ca_cert: Base64PemCertificate | None = None
    serial_number: SerialNumber | None = None


class IotCaStatusNotice(_Data):
    """``io.lamassu.iotcore.ca.status.update`` (reply): AWS IoT changed a CA's status (CloudTrail notifier).

    Source: lamassuiot/lamassu-aws-connector aws-cdk/resources/lambda-notify-iotcore-update-ca/index.ts.
    """

    ca_name: NonEmpty
    status: AwsCaStatus
    ca_id: str | None = None
    ca_serial_number: SerialNumber | None = None


class IotCertStatusNotice(_Data):
    """``io.lamassu.iotcore.cert.status.update`` (reply): AWS IoT changed a certificate's status.

    Source: lamassuiot/lamassu-aws-connector aws-cdk/resources/lambda-notify-iotcore-update-certificate/index.ts.
    """

    status: AwsCertificateStatus
    serial_number: SerialNumber | None = None
    certificate_id: str | None = None
    device_id: str | None = None
    ca_name: str | None = None
    ca_id: str | None = None
    ca_serial_number: SerialNumber | None = None


class IotCertStatusNoticeEarly(_Data):
    """``io.lamassu.iotcore.cert.updatestatus``: the first notifier (camelCase, no status field).

    Source: lamassuiot/lamassu-aws-connector (2022-03)
    aws-cdk/resources/lambda-notify-iotcore-updatecertificate/index.ts.
    """

    certificateID: NonEmpty  # the wire name is camelCase
    caSerialNumber: SerialNumber | None = None


class IotCertStatusNoticeApril(_Data):
    """``io.lamassu.iotcore.cert.update-status``: the notifier of April 2022 (camelCase; the new status
    itself is not in the data, only which certificate and CA).

    Source: lamassuiot/lamassu-aws-connector (d061025..41d6490, 2022-04)
    aws-cdk/resources/lambda-notify-iotcore-update-certificate/index.ts.
    """

    certificateID: NonEmpty  # the wire name is camelCase
    caID: str | None = None
    caName: str | None = None
    caSerialNumber: SerialNumber | None = None
    deviceID: str | None = None


# --- v2.0 (2023-01) -----------------------------------------------------------------------------


class V2Ca(_Data):
    """``io.lamassuiot.ca.create`` / ``.ca.update`` / ``.ca.revoke``: CACertificateSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/ca/server/api/service/amqp_middleware.go (CreateCA,
    UpdateCAStatus, RevokeCA) and pkg/ca/common/api/http_serializer.go (CACertificateSerialized:
    name, status, certificate, serial_number, key_metadata, subject, valid_from/valid_to in ms,
    issuance_duration in s).
    """

    name: NonEmpty
    status: V2CertificateStatus
    serial_number: SerialNumber
    certificate: Base64PemCertificate
    valid_from: GoInt | None = None  # Unix milliseconds
    valid_to: GoInt | None = None


class V2Certificate(_Data):
    """``io.lamassuiot.certificate.update`` / ``.certificate.revoke``: CertificateSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/ca/server/api/service/amqp_middleware.go; consumed by the
    v2.0 device-manager's AMQP handler (pkg/device-manager/server/api/transport).
    """

    serial_number: SerialNumber
    status: V2CertificateStatus
    certificate: Base64PemCertificate | None = None


class V2SignedCertificate(_Data):
    """``io.lamassuiot.certificate.sign``: SignCertificateRequestOutputSerialized, two base64 PEM certificates.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/ca/common/api/http_serializer.go.
    """

    certificate: Base64PemShape
    ca_certificate: Base64PemShape


class V2DeviceCertificate(_Data):
    ca_name: str | None = None
    serial_number: SerialNumber
    status: V2CertificateStatus
    certificate: Base64PemShape | None = None


class V2Slot(_Data):
    """``io.lamassuiot.device.rotate`` / ``.device.revoke``: SlotSerialized (the device's active certificate).

    Source: lamassuiot/lamassuiot v2.0.0 pkg/device-manager/common/api/http_serializer.go (SlotSerialized,
    CertificateSerialized), pkg/device-manager/server/api/service/amqp_middleware.go.
    """

    id: NonEmpty
    active_certificate: V2DeviceCertificate
    archive_certificates: list[V2DeviceCertificate] | None = None


class V2Device(_Data):
    """``io.lamassuiot.device.create`` / ``.device.update`` / ``.device.decommision``: DeviceSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/device-manager/server/api/service/amqp_middleware.go,
    pkg/device-manager/common/api/http_serializer.go and api.go (DeviceStatus).
    """

    id: NonEmpty
    status: V2DeviceStatus
    slots: list[V2Slot] | None = None


class V2Enrollment(_Data):
    """``io.lamassuiot.device.enroll`` / ``.device.reenroll``: the issued certificate, base64 PEM.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/device-manager/server/api/service/amqp_middleware.go
    (EnrollLog, ReEnrollLog).
    """

    certificate: Base64PemShape


class V2ForceReenroll(_Data):
    """``io.lamassuiot.device.forceReenroll``: ForceReenrollSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/device-manager/common/api/http_serializer.go.
    """

    device_id: NonEmpty
    slot_id: NonEmpty
    require_reenrollment: StrictFlag
    crt: Base64PemShape


class V2Dms(_Data):
    """``io.lamassuiot.dms.createcertificate`` / ``.dms.update`` / ``.dms.authorizedcas``: a DMS.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/dms-manager/common/api/http_serializer.go
    (DeviceManufacturingServiceSerialized) and api.go (DMSStatus).
    """

    name: NonEmpty
    status: V2DmsStatus
    serial_number: SerialNumberOrEmpty | None = None
    certificate: Base64PemShape | None = None
    certificate_request: Base64PemCsr | None = None
    authorized_cas: list[str] | None = None


class V2DmsCreated(_Data):
    """``io.lamassuiot.dms.create``: CreateDMSOutputSerialized, the DMS **and its private key**.

    ``private_key`` is base64 of a PEM private key when Lamassu generated the key pair (empty otherwise):
    whoever receives this event holds the DMS's key. Source: lamassuiot/lamassuiot v2.0.0
    pkg/dms-manager/common/api/http_serializer.go (CreateDMSOutputSerialized).
    """

    dms: V2Dms
    private_key: str | None = None


# --- v2.4+ / v3 -----------------------------------------------------------------------------------


class KeyStrengthMetadata(_Data):
    """models.KeyStrengthMetadata: key type (``RSA``, ``ECDSA``, ...), bits and strength, written by every version.

    Source: lamassuiot/lamassuiot core/pkg/models/cryptokey.go (pkg/models before v3.0.0).
    """

    type: GoString | None = None
    bits: GoInt | None = None
    strength: GoString | None = None


class IssuerMetadata(_Data):
    serial_number: IssuerSerialNumber | None = None
    id: str | None = None


class Certificate(_Data):
    """models.Certificate: serial, status, base64 PEM certificate, issuer, metadata.

    Source: lamassuiot/lamassuiot core/pkg/models/ca.go (Certificate, CertificateStatus; pkg/models/ca.go
    before v3.0.0), published by backend/pkg/middlewares/eventpub/ca.go; fixtures
    connectors/awsiot/pkg/testdata/cloudevents/. issuer_metadata.serial_number is "-" for an imported
    certificate whose issuer is not in Lamassu (backend/pkg/services/ca.go ImportCertificate).
    """

    serial_number: SerialNumber
    status: V3CertificateStatus
    certificate: Base64PemCertificate  # *X509Certificate: never nil for a certificate Lamassu holds
    issuer_metadata: IssuerMetadata | None = None
    metadata: dict[str, Any] | None = None
    key_metadata: KeyStrengthMetadata | None = None
    valid_from: GoTime | None = None
    valid_to: GoTime | None = None
    revocation_timestamp: GoTime | None = None


class CaFlat(_Data):
    """models.CACertificate, v2.4.0-v3.1.x: it *embeds* Certificate, so ``certificate`` is the base64 PEM
    string and ``serial_number``, ``status``, ``issuer_metadata``, ``valid_to`` sit beside ``id``.

    Source: lamassuiot/lamassuiot v2.4.0..v3.1.0 pkg/models/ca.go, core/pkg/models/ca.go (CACertificate).
    """

    id: NonEmpty
    serial_number: SerialNumber
    status: V3CertificateStatus
    certificate: Base64PemCertificate
    issuer_metadata: IssuerMetadata | None = None
    metadata: dict[str, Any] | None = None
    level: GoInt | None = None
    key_metadata: KeyStrengthMetadata | None = None
    valid_from: GoTime | None = None
    valid_to: GoTime | None = None
    revocation_timestamp: GoTime | None = None
    creation_ts: GoTime | None = None


class CaNested(_Data):
    """models.CACertificate, v3.2.0+: ``certificate`` is a nested models.Certificate object.

    Source: lamassuiot/lamassuiot v3.2.0+ core/pkg/models/ca.go (CACertificate: id, certificate,
    serial_number, metadata, creation_ts, level; validity until v3.4, profile_id since v3.5.0).
    """

    id: NonEmpty
    certificate: Certificate
    # Go writes it always (string, no omitempty); a record without one would write "".
    serial_number: SerialNumberOrEmpty
    metadata: dict[str, Any] | None = None
    level: GoInt | None = None
    creation_ts: GoTime | None = None


CaShapes = Annotated[
    Annotated[CaNested, Tag("shape v3.2+")] | Annotated[CaFlat, Tag("shape v2.4-v3.1")],
    _shape_of(lambda data: "v2.4-v3.1" if isinstance(data.get("certificate"), str) else "v3.2+", "v3.2+"),
]


class CaCertificate(_RootData[CaShapes]):
    """models.CACertificate in either shape: flat up to v3.1.x (``certificate`` a base64 PEM string,
    ``status`` at top level), nested from v3.2.0 (``certificate`` an object). The shape is chosen by
    the type of ``certificate``.

    Source: lamassuiot/lamassuiot core/pkg/models/ca.go at v3.1.0 and v3.2.0 (CACertificate),
    backend/pkg/middlewares/eventpub/ca.go.
    """


class CaRequest(_Data):
    """``ca.request``: models.CACertificateRequest, a CSR for a CA to be signed outside Lamassu (v3.2.0-v3.6.x).

    Source: lamassuiot/lamassuiot v3.2.0..v3.6.3 core/pkg/models/ca.go (CACertificateRequest,
    CertificateRequestStatus), backend/pkg/middlewares/eventpub/ca.go (RequestCACSR).
    """

    id: NonEmpty
    status: CertificateRequestStatus
    csr: Base64PemCsr
    key_id: str | None = None


class CaDelete(_Data):
    """``ca.delete``: services.DeleteCAInput, no JSON tags: ``CAID``, and ``CascadeDelete`` since v3.6.0.

    Source: lamassuiot/lamassuiot core/pkg/services/ca.go (DeleteCAInput), backend/pkg/middlewares/eventpub/ca.go.
    """

    CAID: NonEmpty
    CascadeDelete: StrictFlag | None = None


class SignaturePayload(_RootData[None]):
    """``ca.sign.signature``: no ``data``. The signature is raw bytes, so the Go SDK writes it base64-encoded
    in ``data_base64`` (datacontenttype application/json).

    Source: lamassuiot/lamassuiot backend/pkg/middlewares/eventpub/ca.go (SignatureSign publishes []byte);
    cloudevents/sdk-go v2 event/event_data.go (SetData: []byte -> DataBase64).
    """

    @model_validator(mode="before")
    @classmethod
    def _absent(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError("must be absent: Lamassu sends the signature bytes base64-encoded in data_base64")
        if isinstance(info.context, dict) and info.context.get(_HAS_DATA_BASE64) is False:
            raise ValueError("must come with data_base64 (the signature bytes, base64-encoded): the event has neither")
        return value


class CertificateDelete(_Data):
    """``certificate.delete``: services.DeleteCertificateInput, no JSON tags: ``{"SerialNumber"}`` (v3.5.0+).

    Source: lamassuiot/lamassuiot core/pkg/services/ca.go (DeleteCertificateInput).
    """

    SerialNumber: SerialNumber


class IdDelete(_Data):
    """``dms.delete`` / ``device.delete`` / ``device-group.delete``: an input struct with one field ``ID``.

    Source: lamassuiot/lamassuiot core/pkg/services/dmsmanager.go (DeleteDMSInput),
    core/pkg/services/devicemanager.go (DeleteDeviceInput, DeleteDeviceGroupInput).
    """

    ID: NonEmpty


class IssuanceProfile(_Data):
    """models.IssuanceProfile (v3.5.0+): validity, key usages, subject and crypto policy of issued certificates.

    Source: lamassuiot/lamassuiot core/pkg/models/issuance_profiles.go, backend/pkg/middlewares/eventpub/ca.go.
    """

    id: NonEmpty
    name: str | None = None
    validity: dict[str, Any] | None = None
    sign_as_ca: StrictFlag | None = None


class ProfileDelete(_Data):
    """``profile.issuance.delete``: services.DeleteIssuanceProfileInput, ``{"ProfileID"}``.

    Source: lamassuiot/lamassuiot core/pkg/services/ca.go (DeleteIssuanceProfileInput).
    """

    ProfileID: NonEmpty


class KmsKeyV36(_Data):
    """models.Key of v3.6.x, when the CA service held the KMS API: ``id``, algorithm, size, public key.

    Source: lamassuiot/lamassuiot v3.6.0 core/pkg/models/kms.go (Key), backend/pkg/middlewares/eventpub/ca.go.
    """

    id: NonEmpty
    algorithm: str | None = None
    size: GoInt | None = None
    public_key: str | None = None
    status: V3CertificateStatus | None = None
    creation_ts: GoTime | None = None


class KmsKeyV37(_Data):
    """models.Key since v3.7.0 (KMS service): ``key_id``, name, aliases, tags, engine, public key.

    Source: lamassuiot/lamassuiot v3.7.0+ core/pkg/models/kms.go (Key), backend/pkg/middlewares/eventpub/kms.go.
    """

    key_id: NonEmpty
    name: GoString  # Go writes it always (no omitempty), "" when the key has no name
    algorithm: str | None = None
    size: GoInt | None = None
    public_key: str | None = None
    has_private_key: StrictFlag | None = None
    creation_ts: GoTime | None = None
    aliases: list[str] | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None


_V37_KEY_FIELDS = frozenset({"key_id", "engine_id", "has_private_key", "aliases", "pkcs11_uri"})
KmsKeyShapes = Annotated[
    Annotated[KmsKeyV37, Tag("shape v3.7+")] | Annotated[KmsKeyV36, Tag("shape v3.6")],
    # v3.7 added key_id with the KMS service's own fields: any of them says which shape a broken one meant.
    _shape_of(lambda data: "v3.7+" if _V37_KEY_FIELDS & data.keys() else "v3.6", "v3.7+"),
]


class KmsKey(_RootData[KmsKeyShapes]):
    """models.Key: ``key_id`` since v3.7.0, ``id`` in v3.6.x.

    Source: lamassuiot/lamassuiot core/pkg/models/kms.go at v3.6.0 and v3.7.0.
    """


class KmsDeleteV36(_Data):
    ID: NonEmpty


class KmsDeleteV37(_Data):
    Identifier: NonEmpty


KmsDeleteShapes = Annotated[
    Annotated[KmsDeleteV37, Tag("shape v3.7+")] | Annotated[KmsDeleteV36, Tag("shape v3.6")],
    _shape_of(lambda data: "v3.6" if "ID" in data else "v3.7+", "v3.7+"),
]


class KmsDelete(_RootData[KmsDeleteShapes]):
    """``kms.delete``: the input struct, Go field names: ``{"Identifier"}`` (services.GetKeyInput, v3.7.0+)
    or ``{"ID"}`` (services.GetByIDInput, v3.6.x).

    Source: lamassuiot/lamassuiot core/pkg/services/kms.go (v3.7.0+), core/pkg/services/ca.go (v3.6.0).
    """


class KmsSignature(_Data):
    """``kms.sign``: models.MessageSignature, the signature in base64.

    Source: lamassuiot/lamassuiot core/pkg/models/kms.go (MessageSignature), backend/pkg/services/kms.go.
    """

    signature: Base64


class KmsVerification(_Data):
    """``kms.verify``: models.MessageValidation, ``valid`` and an optional ``error``.

    Source: lamassuiot/lamassuiot core/pkg/models/kms.go (MessageValidation).
    """

    valid: StrictFlag
    error: str | None = None


class Device(_Data):
    """models.Device: id, status, tags, metadata, owning DMS, identity slot.

    Source: lamassuiot/lamassuiot core/pkg/models/device.go (Device, DeviceStatus), published by
    backend/pkg/middlewares/eventpub/devices.go.
    """

    id: NonEmpty
    status: V3DeviceStatus
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    dms_owner: str | None = None
    creation_timestamp: GoTime | None = None


class DeviceGroupCriterion(_Data):
    """models.DeviceGroupFilterOption: ``operand`` is a resources.FilterOperation, an int (0-27 in v3.8.0).

    Source: lamassuiot/lamassuiot v3.8.0 core/pkg/models/device.go, core/pkg/resources/query.go.
    """

    field: NonEmpty
    operand: Annotated[int, Strict(), Field(ge=0)]
    value: str


class DeviceGroup(_Data):
    """models.DeviceGroup (v3.8.0+): a named, possibly nested, set of devices selected by criteria.

    Source: lamassuiot/lamassuiot core/pkg/models/device.go (DeviceGroup), backend/pkg/middlewares/eventpub/devices.go.
    """

    id: NonEmpty
    name: GoString  # Go writes it always (no omitempty)
    parent_id: str | None = None
    criteria: list[DeviceGroupCriterion] | None = None
    created_at: GoTime | None = None
    updated_at: GoTime | None = None


class Dms(_Data):
    """models.DMS. Source: lamassuiot/lamassuiot core/pkg/models/dms.go, backend/pkg/middlewares/eventpub/dms.go."""

    id: NonEmpty
    name: str | None = None
    metadata: dict[str, Any] | None = None
    creation_ts: GoTime | None = None


class Enrollment(_Data):
    """``dms.enroll`` / ``dms.reenroll``: models.EnrollReenrollEvent, the issued certificate and the DMS id.

    Source: lamassuiot/lamassuiot core/pkg/models/est.go (EnrollReenrollEvent), backend/pkg/middlewares/eventpub/dms.go.
    """

    certificate: Base64PemShape
    aps: NonEmpty


class BindIdentity(_Data):
    """``dms.bind-device-id``: models.BindIdentityToDeviceOutput (the certificate now identifying a device).

    Source: lamassuiot/lamassuiot core/pkg/models/dms.go (BindIdentityToDeviceOutput),
    backend/pkg/middlewares/eventpub/dms.go (BindIdentityToDevice).
    """

    certificate: Certificate | None = None
    dms: Dms | None = None
    device: Device | None = None


class VaRoleV33(_Data):
    """models.VARole of v3.3-v3.4, which had no JSON tags: Go field names.

    Source: lamassuiot/lamassuiot v3.3.0 core/pkg/models/va.go.
    """

    CASubjectKeyID: NonEmpty
    CRLOptions: dict[str, Any] | None = None
    LatestCRL: dict[str, Any] | None = None


class VaRoleV35(_Data):
    """models.VARole since v3.5.0: ``ca_ski``, ``crl_options``, ``latest_crl``.

    Source: lamassuiot/lamassuiot v3.5.0+ core/pkg/models/va.go.
    """

    ca_ski: NonEmpty
    crl_options: dict[str, Any] | None = None
    latest_crl: dict[str, Any] | None = None


VaRoleShapes = Annotated[
    Annotated[VaRoleV35, Tag("shape v3.5+")] | Annotated[VaRoleV33, Tag("shape v3.3-v3.4")],
    _shape_of(lambda data: "v3.5+" if "ca_ski" in data else "v3.3-v3.4", "v3.5+"),
]


class VaRole(_RootData[VaRoleShapes]):
    """models.VARole: the CRL policy of a CA (by subject key id) and its latest CRL.

    Source: lamassuiot/lamassuiot core/pkg/models/va.go (v3.3.0: no JSON tags; v3.5.0+: snake_case),
    backend/pkg/middlewares/eventpub/crl.go.
    """


class RevocationList(_Data):
    """Go's x509.RevocationList as encoding/json writes it: Go field names, byte slices in base64,
    ``Number`` and the entries' ``SerialNumber`` as JSON numbers.

    Source: lamassuiot/lamassuiot backend/pkg/middlewares/eventpub/crl.go (CalculateCRL publishes
    *x509.RevocationList); Go crypto/x509 (RevocationList).
    """

    ThisUpdate: NonEmpty
    NextUpdate: NonEmpty
    Number: Annotated[int, Strict()] | Annotated[float, Strict()] | None = None  # a big.Int: a JSON number
    Issuer: dict[str, Any] | None = None


class AuditRecord(_Data):
    """``audit.<type>``: auditpub.AuditBody of a successful action: the service input (Go field names,
    private keys removed), ``has_error`` false, and the action's output (the event's data model; ``{}``
    or null for deletes; base64 for ``audit.ca.sign.signature``).

    Source: lamassuiot/lamassuiot v3.5.0+ backend/pkg/middlewares/audit/utils.go (AuditBody,
    HandleServiceOutputAndPublishAuditRecord), audit/ca.go, audit/kms.go.
    """

    input: dict[str, Any]
    has_error: FalseFlag
    output: Any  # always written (no omitempty); null for some deletes


class ErrorRecord(_Data):
    """``<type>.error``: auditpub.AuditBody of a failed action: the service input, ``has_error`` true, and
    the error text as ``output``.

    Source: lamassuiot/lamassuiot v3.5.0+ backend/pkg/middlewares/audit/utils.go.
    """

    input: dict[str, Any]
    has_error: TrueFlag
    output: str


Entity = TypeVar("Entity", bound=BaseModel)


class Update(_Data, Generic[Entity]):
    """models.UpdateModel: the entity before and after. Source: lamassuiot/lamassuiot core/pkg/models/events.go."""

    previous: Entity
    updated: Entity


# --- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventSpec:
    event_type: str
    generation: Generation
    direction: Direction
    model: type[BaseModel]
    summary: str
    answers: str | None = None  # for a reply: the command type it answers (v1: same id)
    since: str | None = None  # first Lamassu release that publishes it (v2.4+)
    until: str | None = None  # last release series that publishes it; None: still published
    note: str | None = None
    kind: EventKind = EventKind.EVENT

    @property
    def fields(self) -> list[str]:
        return _fields_of(self.model)

    @property
    def releases(self) -> str | None:
        """The Lamassu releases that publish it, e.g. ``v3.5.0+`` or ``v2.6.0-v3.4.x``."""
        if self.since is None:
            return None
        return f"{self.since}-{self.until}" if self.until else f"{self.since}+"

    @property
    def schema_name(self) -> str:
        if self.kind is EventKind.AUDIT:
            return "audit-record"
        if self.kind is EventKind.ERROR:
            return "error-record"
        suffix = "" if _directions_of(self.event_type) == {self.direction} else f".{self.direction.value}"
        return f"{self.event_type}{suffix}"

    def listing(self) -> dict[str, Any]:
        """One row of ``lamassu-aws-connector events --json``."""
        return {
            "type": self.event_type,
            "generation": self.generation.value,
            "releases": self.releases,
            "direction": self.direction.value,
            "kind": self.kind.value,
            "fields": self.fields,
            "shapes": [
                variant
                for variant in _shape_variants(self.model)
                # The v2.4.0-v2.5.0 names were gone before the nested shapes came.
                if self.generation is not Generation.V2_4 or variant["shape"].startswith("v2.4")
            ],
            "answers": self.answers,
            "summary": self.summary,
            "note": self.note,
        }


def _fields_of(model: type[BaseModel]) -> list[str]:
    if not issubclass(model, RootModel):
        return list(model.model_fields)
    names: dict[str, None] = {}
    for shape in _shapes_of(model):
        names.update(dict.fromkeys(_fields_of(shape)))
    return list(names) or ["(see schema)"]


def _shape_variants(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Where the data's shape changed between Lamassu releases: each variant with its releases and fields,
    e.g. ``{"at": "data.updated", "shape": "v3.2+", "model": "CaNested", "fields": [...]}``."""
    return [
        {"at": at, "shape": shape, "model": variant.__name__, "fields": _fields_of(variant)}
        for at, shape, variant in _shape_points(model)
    ]


def _shape_points(model: type[BaseModel], path: str = "data", depth: int = 0) -> list[tuple[str, str, type[BaseModel]]]:
    """(where, shape, model) of every union of release shapes inside a data model."""
    if depth > 4:
        return []
    points: list[tuple[str, str, type[BaseModel]]] = []
    if issubclass(model, RootModel):
        for member in _shape_members(model):
            if typing.get_origin(member) is not Annotated:
                continue
            inner, *metadata = typing.get_args(member)
            tags = [meta.tag for meta in metadata if isinstance(meta, Tag)]
            if tags and isinstance(inner, type) and issubclass(inner, BaseModel):
                points.append((path, tags[0].removeprefix(_SHAPE_TAG_PREFIX), inner))
        return points
    for name, field in model.model_fields.items():
        for candidate in models_in(field.annotation):
            points.extend(_shape_points(candidate, f"{path}.{name}", depth + 1))
    return points


def matched_shapes(event_type: str, data: Any) -> list[str]:
    """The release shapes (e.g. ``v2.4-v3.1``, ``v3.2+``) that valid ``data`` of this type has, in order."""
    found: dict[str, None] = {}
    for spec in specs_for(event_type):
        for at, shape, variant in _shape_points(spec.model):
            value = data
            for part in at.split(".")[1:]:
                value = value.get(part) if isinstance(value, dict) else None
            if not isinstance(value, dict) or shape in found:
                continue
            try:
                variant.model_validate(value, context={_PARSE_CERTIFICATES: False})
            except ValidationError:
                continue
            found[shape] = None
    return list(found)


def _shape_members(model: type[BaseModel]) -> tuple[Any, ...]:
    """The members of a RootModel's discriminated union of shapes, else (). pydantic before 2.8 keeps
    the union's Annotated wrapper (and the Discriminator in it) on the field's annotation."""
    root = model.model_fields["root"]
    annotation, metadata = root.annotation, list(root.metadata)
    if typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    if not any(isinstance(meta, Discriminator) for meta in metadata):
        return ()
    return typing.get_args(annotation)


def _shapes_of(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models of a RootModel over shapes (a union with a shape discriminator), newest first; else []."""
    shapes = []
    for member in _shape_members(model):
        inner = typing.get_args(member)[0] if typing.get_origin(member) is Annotated else member
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            shapes.append(inner)
    return shapes


_V1, _V2, _V24, _V3 = Generation.V1, Generation.V2_0, Generation.V2_4, Generation.V3
_CMD, _REPLY = Direction.COMMAND, Direction.REPLY


def _v3(
    event_type: str, model: type[BaseModel], summary: str, since: str, until: str | None = None, **kw: Any
) -> EventSpec:
    return EventSpec(event_type, _V3, _CMD, model, summary, since=since, until=until, **kw)


def _v24(event_type: str, model: type[BaseModel], summary: str, renamed_to: str) -> EventSpec:
    return EventSpec(
        event_type, _V24, _CMD, model, summary, since="v2.4.0", until="v2.5.0", note=f"renamed {renamed_to} in v2.5.1"
    )


def _v2(event_type: str, model: type[BaseModel], summary: str, note: str | None = None) -> EventSpec:
    return EventSpec(f"io.lamassuiot.{event_type}", _V2, _CMD, model, summary, note=note)


_PRIVATE_KEY_NOTE = "carries the DMS private key (base64 PEM) when Lamassu generated it"

SPECS: tuple[EventSpec, ...] = (
    EventSpec("io.lamassu.ca.create", _V1, _CMD, V1CaCreated, "a CA was created"),
    EventSpec("io.lamassu.ca.import", _V1, _CMD, V1CaCreated, "a CA was imported"),
    EventSpec("io.lamassu.ca.update", _V1, _CMD, V1CaUpdated, "a CA was revoked"),
    EventSpec("io.lamassu.cert.update", _V1, _CMD, V1CertUpdated, "a certificate was revoked"),
    EventSpec("io.lamassu.iotcore.config.request", _V1, _CMD, IotConfigRequest, "get the AWS IoT configuration"),
    EventSpec(
        "io.lamassu.iotcore.thing.config.request", _V1, _CMD, IotThingConfigRequest, "get a thing's configuration"
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.request-code",
        _V1,
        _CMD,
        IotCaRegistrationRequest,
        "ask AWS IoT for a CA registration code",
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.init",
        _V1,
        _CMD,
        IotCaRegistrationRequest,
        "ask for a CA registration code (early name)",
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.signed-code",
        _V1,
        _CMD,
        IotCaRegistrationSigned,
        "register a CA with its verification certificate",
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.signed_challenge",
        _V1,
        _CMD,
        IotCaRegistrationSigned,
        "register a CA (early name)",
    ),
    EventSpec("io.lamassu.iotcore.ca.policy.attach", _V1, _CMD, IotCaPolicyAttach, "attach an AWS IoT policy to a CA"),
    EventSpec("io.lamassu.iotcore.ca.status.update", _V1, _CMD, IotCaStatusCommand, "set a CA's status in AWS IoT"),
    EventSpec(
        "io.lamassu.iotcore.cert.status.update",
        _V1,
        _CMD,
        IotCertStatusCommand,
        "set a certificate's status in AWS IoT",
    ),
    EventSpec(
        "io.lamassu.iotcore.config.response",
        _V1,
        _REPLY,
        IotConfigResponse,
        "the AWS IoT configuration",
        answers="io.lamassu.iotcore.config.request",
    ),
    EventSpec(
        "io.lamassu.iotcore.thing.config.response",
        _V1,
        _REPLY,
        IotThingConfigResponse,
        "a thing's AWS IoT configuration",
        answers="io.lamassu.iotcore.thing.config.request",
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.response-code",
        _V1,
        _REPLY,
        IotCaRegistrationCode,
        "the CA registration code",
        answers="io.lamassu.iotcore.ca.registration.request-code",
    ),
    EventSpec(
        "io.lamassu.iotcore.ca.registration.reg-code",
        _V1,
        _REPLY,
        IotCaRegistrationCode,
        "the CA registration code (early name)",
        answers="io.lamassu.iotcore.ca.registration.init",
    ),
    EventSpec("io.lamassu.iotcore.ca.status.update", _V1, _REPLY, IotCaStatusNotice, "AWS IoT changed a CA's status"),
    EventSpec(
        "io.lamassu.iotcore.cert.status.update",
        _V1,
        _REPLY,
        IotCertStatusNotice,
        "AWS IoT changed a certificate's status",
    ),
    EventSpec(
        "io.lamassu.iotcore.cert.updatestatus",
        _V1,
        _REPLY,
        IotCertStatusNoticeEarly,
        "AWS IoT changed a certificate (early notifier)",
    ),
    EventSpec(
        "io.lamassu.iotcore.cert.update-status",
        _V1,
        _REPLY,
        IotCertStatusNoticeApril,
        "AWS IoT changed a certificate's status (April 2022 notifier)",
        note="renamed io.lamassu.iotcore.cert.status.update (with a status field) at the end of April 2022",
    ),
    # v2.0.0: pkg/{ca,device-manager,dms-manager}/server/api/service/amqp_middleware.go
    _v2("ca.create", V2Ca, "a CA was created"),
    _v2("ca.update", V2Ca, "a CA's status changed"),
    _v2("ca.revoke", V2Ca, "a CA was revoked"),
    _v2("certificate.sign", V2SignedCertificate, "a CA signed a certificate request"),
    _v2("certificate.revoke", V2Certificate, "a certificate was revoked"),
    _v2("certificate.update", V2Certificate, "a certificate's status changed"),
    _v2("device.create", V2Device, "a device was registered"),
    _v2("device.update", V2Device, "a device's metadata changed"),
    _v2("device.decommision", V2Device, "a device was decommissioned (Lamassu's spelling)"),
    _v2("device.rotate", V2Slot, "a device slot got a new active certificate"),
    _v2("device.revoke", V2Slot, "a device slot's active certificate was revoked"),
    _v2("device.enroll", V2Enrollment, "a device enrolled (EST)"),
    _v2("device.reenroll", V2Enrollment, "a device re-enrolled (EST)"),
    _v2("device.forceReenroll", V2ForceReenroll, "a device was told to re-enroll"),
    _v2("dms.create", V2DmsCreated, "a DMS was created with a Lamassu-generated key", note=_PRIVATE_KEY_NOTE),
    _v2("dms.createcertificate", V2Dms, "a DMS was created from a certificate request"),
    _v2("dms.update", V2Dms, "a DMS's status changed"),
    _v2("dms.authorizedcas", V2Dms, "a DMS's authorized CAs changed"),
    # v2.4.0-v2.5.0: the names v2.5.1 renamed (pkg/models/events.go at v2.4.0..v2.5.0)
    _v24("ca.update.status", Update[CaCertificate], "a CA's status changed", "ca.status.update"),
    _v24("ca.update.metadata", Update[CaCertificate], "a CA's metadata changed", "ca.metadata.update"),
    _v24(
        "certificate.update.status", Update[Certificate], "a certificate's status changed", "certificate.status.update"
    ),
    _v24(
        "certificate.update.metadata",
        Update[Certificate],
        "a certificate's metadata changed",
        "certificate.metadata.update",
    ),
    _v24("device.update.identity", Update[Device], "a device's identity slot changed", "device.identity.update"),
    _v24("device.update.status", Update[Device], "a device's status changed", "device.status.update"),
    _v24("device.update.metadata", Update[Device], "a device's metadata changed", "device.metadata.update"),
    _v24("dms.update.metadata", Update[Dms], "a DMS's metadata changed", "dms.metadata.update"),
    # v2.4+/v3: CA service
    _v3("ca.create", CaCertificate, "a CA was created", "v2.4.0"),
    _v3("ca.import", CaCertificate, "a CA was imported", "v2.4.0"),
    _v3("ca.request", CaRequest, "a CA key pair and CSR were created", "v3.2.0", "v3.6.x"),
    _v3(
        "ca.certificate.import",
        Certificate,
        "a certificate was imported",
        "v2.4.0",
        "v3.4.x",
        note="renamed certificate.import in v3.5.0; later only the audit name audit.ca.certificate.import",
    ),
    _v3("ca.profile.update", Update[CaNested], "a CA's issuance profile changed", "v3.5.0"),
    _v3("ca.status.update", Update[CaCertificate], "a CA's status changed", "v2.5.1"),
    _v3("ca.metadata.update", Update[CaCertificate], "a CA's metadata changed", "v2.5.1"),
    _v3(
        "ca.issuance-expiration.update",
        Update[CaCertificate],
        "a CA's issuance expiration changed",
        "v2.6.0",
        "v3.4.x",
    ),
    _v3("ca.reissue", Update[CaNested], "a CA certificate was reissued", "v3.7.0"),
    _v3("ca.sign.certificate", Certificate, "a CA signed a certificate", "v2.4.0"),
    _v3(
        "ca.sign.signature",
        SignaturePayload,
        "a CA signed a message",
        "v2.4.0",
        note="the signature travels in data_base64",
    ),
    _v3("ca.delete", CaDelete, "a CA was deleted", "v2.4.0"),
    _v3("kms.create", KmsKey, "a key was created", "v3.6.0"),
    _v3("kms.import", KmsKey, "a key was imported", "v3.6.0"),
    _v3("kms.metadata.update", Update[KmsKeyV37], "a key's metadata changed", "v3.7.0"),
    _v3("kms.aliases.update", Update[KmsKeyV37], "a key's aliases changed", "v3.7.0"),
    _v3("kms.name.update", Update[KmsKeyV37], "a key was renamed", "v3.7.0"),
    _v3("kms.tags.update", Update[KmsKeyV37], "a key's tags changed", "v3.7.0"),
    _v3("kms.delete", KmsDelete, "a key was deleted", "v3.6.0"),
    _v3("kms.sign", KmsSignature, "a key signed a message", "v3.6.0"),
    _v3("kms.verify", KmsVerification, "a signature was verified", "v3.6.0"),
    _v3("profile.issuance.create", IssuanceProfile, "an issuance profile was created", "v3.5.0"),
    _v3("profile.issuance.update", Update[IssuanceProfile], "an issuance profile changed", "v3.5.0"),
    _v3("profile.issuance.delete", ProfileDelete, "an issuance profile was deleted", "v3.5.0"),
    _v3(
        "certificate.create",
        Certificate,
        "a certificate was issued",
        "v2.4.0",
        note="not published by v3.7.x (no CreateCertificate)",
    ),
    _v3(
        "certificate.import",
        Certificate,
        "a certificate was imported",
        "v3.5.0",
        note="declared but unpublished v2.4.0-v3.4.x (imports were ca.certificate.import)",
    ),
    _v3("certificate.status.update", Update[Certificate], "a certificate's status changed", "v2.5.1"),
    _v3("certificate.metadata.update", Update[Certificate], "a certificate's metadata changed", "v2.5.1"),
    _v3("certificate.delete", CertificateDelete, "a certificate was deleted", "v3.5.0"),
    _v3("dms.create", Dms, "a DMS (registration authority) was created", "v2.4.0"),
    _v3("dms.update", Update[Dms], "a DMS changed", "v2.5.2"),
    _v3(
        "dms.metadata.update",
        Update[Dms],
        "a DMS's metadata changed",
        "v2.5.1",
        note="not published v2.5.2-v3.4.x (dms.update instead)",
    ),
    _v3("dms.delete", IdDelete, "a DMS was deleted", "v3.4.0"),
    _v3("dms.enroll", Enrollment, "a device enrolled through a DMS (EST)", "v2.4.0"),
    _v3("dms.reenroll", Enrollment, "a device re-enrolled through a DMS (EST)", "v2.4.0"),
    _v3("dms.bind-device-id", BindIdentity, "a certificate became a device's identity", "v2.4.0"),
    _v3("device.create", Device, "a device was registered", "v2.4.0"),
    _v3("device.identity.update", Update[Device], "a device's identity slot changed", "v2.5.1"),
    _v3("device.status.update", Update[Device], "a device's status changed", "v2.5.1"),
    _v3("device.metadata.update", Update[Device], "a device's metadata changed", "v2.5.1"),
    _v3("device.delete", IdDelete, "a device was deleted", "v3.5.0"),
    _v3("device-group.create", DeviceGroup, "a device group was created", "v3.8.0"),
    _v3("device-group.update", Update[DeviceGroup], "a device group changed", "v3.8.0"),
    _v3("device-group.delete", IdDelete, "a device group was deleted", "v3.8.0"),
    _v3("va.role.update", VaRole, "a CA's CRL policy changed", "v3.3.0"),
    _v3(
        "va.crl.create",
        RevocationList,
        "a CRL was issued",
        "v3.3.0",
        "v3.4.x",
        note="renamed va.role.crl.create in v3.5.0",
    ),
    _v3("va.role.crl.create", RevocationList, "a CRL was issued", "v3.5.0"),
    _v3(
        "va.role.crl.init",
        VaRole,
        "a CA's CRL role was initialised",
        "v3.8.0",
        note="declared since v3.5.0, published since v3.8.0",
    ),
    # The families the CA and KMS services publish around every action (audit/utils.go).
    _v3(
        "audit.*",
        AuditRecord,
        "audit copy of a successful CA or KMS action (audit.<type>)",
        "v3.5.0",
        kind=EventKind.AUDIT,
        note="repeats the output of the <type> event it accompanies",
    ),
    _v3(
        "*.error",
        ErrorRecord,
        "a CA or KMS action failed (<type>.error)",
        "v3.5.0",
        kind=EventKind.ERROR,
    ),
)

# The decided forwarding default per kind (docs/lamassu-generations.md, "Audit copies and error records"):
# audit copies repeat the event they accompany and are skipped; error records exist nowhere else and go on.
DEFAULT_FORWARDING: dict[EventKind, Literal["forward", "skip"]] = {
    EventKind.EVENT: "forward",
    EventKind.AUDIT: "skip",
    EventKind.ERROR: "forward",
    EventKind.UNKNOWN: "forward",
}

# Declared in Lamassu's events.go but never published (or not in every release): name -> what to know.
DECLARED_NOT_PUBLISHED: dict[str, str] = {
    "any": "a subscription wildcard of the alerts service, never an event type",
    "ca.request": "declared since v3.2.0; published v3.2.0-v3.6.x only (RequestCACSR was removed in v3.7.0)",
    "ca.certificate.import": "published up to v3.4.x; since v3.5.0 only the audit copy audit.ca.certificate.import",
    "certificate.import": "declared v2.4.0-v3.4.x without a publisher; published since v3.5.0",
    "va.role.crl.init": "declared since v3.5.0; published since v3.8.0",
}

# The actions the CA (v3.5.0+) and KMS (v3.7.0+; v3.6.x inside the CA service) services audit: each
# publishes audit.<action> on success and <action>.error on failure. backend/pkg/middlewares/audit/.
AUDITED_ACTIONS: frozenset[str] = frozenset(
    {
        "ca.create",
        "ca.import",
        "ca.request",
        "ca.certificate.import",
        "ca.profile.update",
        "ca.status.update",
        "ca.metadata.update",
        "ca.reissue",
        "ca.sign.certificate",
        "ca.sign.signature",
        "ca.delete",
        "certificate.create",
        "certificate.status.update",
        "certificate.metadata.update",
        "certificate.delete",
        "profile.issuance.create",
        "profile.issuance.update",
        "profile.issuance.delete",
        "kms.create",
        "kms.import",
        "kms.metadata.update",
        "kms.aliases.update",
        "kms.name.update",
        "kms.tags.update",
        "kms.delete",
        "kms.sign",
        "kms.verify",
    }
)

_BY_TYPE: dict[str, tuple[EventSpec, ...]] = {}
_FAMILIES: dict[EventKind, EventSpec] = {}
for _spec in SPECS:
    if _spec.kind is EventKind.EVENT:
        _BY_TYPE[_spec.event_type] = (*_BY_TYPE.get(_spec.event_type, ()), _spec)
    else:
        _FAMILIES[_spec.kind] = _spec

# Command types whose replies are correlated by default: those the catalogue knows an answer for.
REPLY_EXPECTED: frozenset[str] = frozenset(spec.answers for spec in SPECS if spec.answers)
# Reply types that answer a command (as opposed to unsolicited notifications from AWS).
ANSWER_TYPES: frozenset[str] = frozenset(spec.event_type for spec in SPECS if spec.answers)

# The services' type prefixes on lamassu-events: what audit.<type> and <type>.error wrap.
_LAMASSU_DOMAINS = ("ca.", "certificate.", "kms.", "profile.", "dms.", "device.", "device-group.", "va.")
_CACHE_LIMIT = 10_000
_RESOLVED: dict[str, tuple[EventKind, tuple[EventSpec, ...]]] = {}


def _resolve(event_type: str) -> tuple[EventKind, tuple[EventSpec, ...]]:
    """(kind, specs) of a type; one dict lookup once a type has been seen."""
    hit = _RESOLVED.get(event_type)
    if hit is not None:
        return hit
    specs = _BY_TYPE.get(event_type)
    if specs is not None:
        resolved = (EventKind.EVENT, specs)
    elif event_type.startswith("audit.") and event_type[6:].startswith(_LAMASSU_DOMAINS):
        resolved = (EventKind.AUDIT, (_FAMILIES[EventKind.AUDIT],))
    elif event_type.endswith(".error") and event_type[:-6].startswith(_LAMASSU_DOMAINS):
        resolved = (EventKind.ERROR, (_FAMILIES[EventKind.ERROR],))
    else:
        resolved = (EventKind.UNKNOWN, ())
    if len(_RESOLVED) < _CACHE_LIMIT:  # types come from the wire: bound what is remembered
        _RESOLVED[event_type] = resolved
    return resolved


def event_kind(event_type: str) -> EventKind:
    """``event``, ``audit`` (``audit.<type>``), ``error`` (``<type>.error``) or ``unknown``. Cheap (cached)."""
    return _resolve(event_type)[0]


def action_of(event_type: str) -> str:
    """The action an audit copy or error record is about (``audit.ca.create`` -> ``ca.create``), else the type."""
    kind = event_kind(event_type)
    if kind is EventKind.AUDIT:
        return event_type[6:]
    if kind is EventKind.ERROR:
        return event_type[:-6]
    return event_type


def _directions_of(event_type: str) -> set[Direction]:
    return {spec.direction for spec in _BY_TYPE.get(event_type, ())}


def specs_for(event_type: str) -> tuple[EventSpec, ...]:
    """The catalogue entries for a type: its own, or the audit/error family it belongs to."""
    return _resolve(event_type)[1]


def is_known(event_type: str) -> bool:
    """A type the catalogue names: its own types, and the audit copies and error records of the actions
    Lamassu audits. A bounded set, safe as a metric label (other ``audit.*`` / ``*.error`` types are
    still recognised by :func:`event_kind` and checked, but not named)."""
    kind = event_kind(event_type)
    if kind is EventKind.EVENT:
        return True
    return kind is not EventKind.UNKNOWN and action_of(event_type) in AUDITED_ACTIONS


def check_data(
    event_type: str,
    data: Any,
    direction: Direction | None = None,
    *,
    parse_certificates: bool = True,
    has_data_base64: bool | None = None,
) -> str | None:
    """Why ``data`` does not fit the catalogue model of ``event_type``, or None (also for unknown types).

    A type known in both directions (v1 ``io.lamassu.iotcore.*.status.update``) is checked against
    the model of ``direction`` when given, else it passes if either model accepts it.
    ``parse_certificates``: False checks certificate fields for shape only (no X.509 parse).
    ``has_data_base64``: whether the event carries ``data_base64`` (None: not known, not checked).
    """
    specs = _resolve(event_type)[1]
    if not specs:
        return None
    if direction is not None and len(specs) > 1:
        specs = tuple(spec for spec in specs if spec.direction == direction) or specs
    problems = []
    context: dict[str, Any] = {_PARSE_CERTIFICATES: parse_certificates}
    if has_data_base64 is not None:
        context[_HAS_DATA_BASE64] = has_data_base64
    for spec in specs:
        try:
            spec.model.model_validate(data, context=context)
        except ValidationError as exc:
            problems.append(describe(exc))
            continue
        if spec.kind is EventKind.AUDIT:
            return _audit_output_problem(event_type, data, context)
        return None
    return " | ".join(problems)


# Audit copies whose output is the entity the action returned (audit/*.go: the service output, the
# updated entity for an update, where the event carries {previous, updated}): checked as that entity.
# Others (deletes, signatures, verifications, enrolments, CRLs, KMS updates) carry other outputs.
_AUDITED_ENTITIES = frozenset(
    {
        "ca.create",
        "ca.import",
        "ca.status.update",
        "ca.profile.update",
        "ca.metadata.update",
        "ca.reissue",
        "ca.sign.certificate",
        "certificate.create",
        "certificate.status.update",
        "certificate.metadata.update",
        "device.create",
        "device.status.update",
        "device.identity.update",
        "device.metadata.update",
        "device-group.create",
        "device-group.update",
        "dms.create",
        "dms.update",
        "dms.metadata.update",
        "profile.issuance.create",
        "profile.issuance.update",
        "kms.create",
        "kms.import",
    }
)


def _audit_output_problem(event_type: str, data: Any, context: dict[str, Any]) -> str | None:
    audited = event_type.removeprefix("audit.")
    output = data.get("output") if isinstance(data, dict) else None
    if audited not in _AUDITED_ENTITIES or not isinstance(output, dict) or not output:
        return None
    model = next((spec.model for spec in _BY_TYPE.get(audited, ()) if spec.generation is _V3), None)
    if model is None:
        return None
    entity: Any = model.model_fields["updated"].annotation if issubclass(model, Update) else model
    try:
        entity.model_validate(output, context=context)
    except ValidationError as exc:
        return describe(exc, prefix="data.output")
    return None


def describe(exc: ValidationError, limit: int = 3, prefix: str = "data") -> str:
    """One line naming each offending data field, e.g. ``data.updated.status: Input should be ...``."""
    parts = []
    errors = exc.errors(include_url=False)
    for error in errors[:limit]:
        loc = [str(part) for part in error["loc"] if not str(part).startswith(_SHAPE_TAG_PREFIX)]
        path = ".".join([prefix, *loc])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"{path} is missing")
        else:
            shown = repr(error.get("input"))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            parts.append(f"{path}: {message} (got {shown})")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def json_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file stem, JSON Schema of the event's ``data``) for every catalogue entry, in catalogue order."""
    for spec in SPECS:
        schema = spec.model.model_json_schema()
        releases = f", Lamassu {spec.releases}" if spec.releases else ""
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lamassu-aws-connector/events/{spec.schema_name}.json",
            "title": f"{spec.event_type} data ({spec.generation.value}{releases}, {spec.direction.value})",
            "description": inspect.cleandoc(spec.model.__doc__ or spec.summary),
            **{key: value for key, value in schema.items() if key not in ("title", "description")},
        }
        yield spec.schema_name, schema


class DataCheck:
    """``validation.data`` for outbound events: off, warn (forward, count, log) or enforce (reject);
    ``parse_certificates`` per ``validation.certificates`` (x509: True, shape: False)."""

    def __init__(
        self, mode: Literal["off", "warn", "enforce"], metrics: Metrics, *, parse_certificates: bool = True
    ) -> None:
        self._mode = mode
        self._metrics = metrics
        self._parse_certificates = parse_certificates

    def rejection(self, event: CloudEvent, fields: dict[str, Any]) -> str | None:
        """The reason to dead-letter ``event``, or None to forward it. Unknown types cost one dict lookup."""
        if self._mode == "off" or not (_RESOLVED.get(event.type) or _resolve(event.type))[1]:
            return None
        problem = check_data(
            event.type,
            event.data,
            Direction.COMMAND,
            parse_certificates=self._parse_certificates,
            has_data_base64=event.data_base64 is not None,
        )
        if problem is None:
            return None
        label = event.type if is_known(event.type) else specs_for(event.type)[0].event_type  # bounded labels
        self._metrics.events_invalid_data.labels(label, self._mode).inc()
        if self._mode == "enforce":
            return f"data does not fit the catalogue model of {event.type}: {problem}"
        log.warning("outbound.invalid_data", **fields, reason=problem, action="forwarded (validation.data: warn)")
        return None
