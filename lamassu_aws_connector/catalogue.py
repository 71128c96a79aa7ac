"""The Lamassu event catalogue: the CloudEvent types the connector knows and the shape of their ``data``.

Grouped by Lamassu generation:

* **v1** (2022): ``io.lamassu.*`` published by lamassu-ca on the default exchange, and the AWS IoT Core
  request/reply types ``io.lamassu.iotcore.*`` that the Lambdas of the original aws-connector consume
  (commands) and emit (replies);
* **v2.0** (2023-01): ``io.lamassuiot.*`` on the topic exchange ``lamassu``;
* **v2.4+/v3** (2023-12 onwards): short types (``ca.create``, ``certificate.status.update``,
  ``device.create``, ``dms.bind-device-id``, ...) on ``lamassu-events``; updates carry
  ``{"previous": ..., "updated": ...}``.

The models are tolerant where Lamassu is loose (extra fields are kept, fields Lamassu omits in
some version are optional) and strict where a wrong value would mislead AWS: status enums, the
serial-number format, and base64 PEM fields that must decode to an X.509 certificate. Shapes were
learnt from the public lamassuiot repositories; each model's docstring names its source files.
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    RootModel,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from .events import CloudEvent
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)


class Generation(StrEnum):
    V1 = "v1"
    V2_0 = "v2.0"
    V3 = "v2.4+/v3"


class Direction(StrEnum):
    COMMAND = "command"  # Lamassu -> RabbitMQ -> SQS lamassu-command
    REPLY = "reply"  # SQS lamassu-response (AWS Lambdas) -> RabbitMQ


# Lamassu writes serial numbers as hex byte pairs joined by "-" (v1: also ":"); the earliest v1
# Lambdas wrote them without separators. Anything else would name the wrong certificate in AWS IoT.
_SERIAL_PATTERN = r"^(?:[0-9a-fA-F]{2}(?:[-:][0-9a-fA-F]{2})*|[0-9a-fA-F]+)$"
SerialNumber = Annotated[str, StringConstraints(pattern=_SERIAL_PATTERN)]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


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


def _x509_base64_pem(value: str) -> str:
    problem = _certificate_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Base64PemCertificate = Annotated[
    str,
    AfterValidator(_x509_base64_pem),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "application/x-pem-file",
            "description": "base64 of a PEM 'BEGIN CERTIFICATE' block holding one X.509 certificate",
        }
    ),
]

# Status vocabularies. Lamassu's own enums are upper case in every generation.
V1Status = Literal["ACTIVE", "ISSUED", "REVOKED", "EXPIRED", "INACTIVE"]
V2CertificateStatus = Literal["ACTIVE", "ABOUT_TO_EXPIRE", "EXPIRED", "REVOKED", "INACTIVE"]
V3CertificateStatus = Literal["ACTIVE", "EXPIRED", "REVOKED", "INACTIVE"]
V3DeviceStatus = Literal[
    "NO_IDENTITY", "ACTIVE", "RENEWAL_PENDING", "EXPIRING_SOON", "EXPIRED", "REVOKED", "DECOMMISSIONED"
]
AwsCaStatus = Literal["ACTIVE", "INACTIVE", "PENDING_TRANSFER"]
AwsCertificateStatus = Literal[
    "ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"
]


class _Data(BaseModel):
    # Lamassu adds fields between releases: keep them, check only what the AWS side relies on.
    model_config = ConfigDict(extra="allow")


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


class IotThingConfigResponse(RootModel[ThingConfigReply | list[ThingConfig]]):
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


# --- v2.0 (2023-01) -----------------------------------------------------------------------------


class V2Ca(_Data):
    """``io.lamassuiot.ca.create``: CreateCAOutputSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/ca/server/api/service/amqp_middleware.go and
    pkg/ca/common/api/http_serializer.go.
    """

    name: NonEmpty
    status: V2CertificateStatus
    serial_number: SerialNumber
    certificate: Base64PemCertificate


class V2Certificate(_Data):
    """``io.lamassuiot.certificate.update``: UpdateCertificateStatusOutputSerialized.

    Source: lamassuiot/lamassuiot v2.0.0 pkg/ca/server/api/service/amqp_middleware.go; consumed by the
    v2.0 device-manager's AMQP handler (pkg/device-manager/server/api/transport).
    """

    serial_number: SerialNumber
    status: V2CertificateStatus
    certificate: Base64PemCertificate | None = None


class V2Device(_Data):
    """``io.lamassuiot.device.create``: the v2.0 device (its status vocabulary is not pinned here).

    Source: lamassuiot/lamassuiot v2.0.0 pkg/device-manager/server/api/service/amqp_middleware.go and
    pkg/device-manager/common/api/http_serializer.go.
    """

    id: NonEmpty
    status: str | None = None


# --- v2.4+ / v3 -----------------------------------------------------------------------------------


class IssuerMetadata(_Data):
    serial_number: SerialNumber | None = None
    id: str | None = None


class Certificate(_Data):
    """models.Certificate: serial, status, base64 PEM certificate, issuer, metadata.

    Source: lamassuiot/lamassuiot core/pkg/models/ca.go (Certificate, CertificateStatus), published by
    backend/pkg/middlewares/eventpub/ca.go; fixtures connectors/awsiot/pkg/testdata/cloudevents/.
    """

    serial_number: SerialNumber
    status: V3CertificateStatus
    certificate: Base64PemCertificate | None = None
    issuer_metadata: IssuerMetadata | None = None
    metadata: dict[str, Any] | None = None


class CaCertificate(_Data):
    """models.CACertificate: a CA id with its certificate (v3 nests it; v2.4-2.8 inlined its fields).

    Source: lamassuiot/lamassuiot core/pkg/models/ca.go (CACertificate), backend/pkg/middlewares/eventpub/ca.go.
    """

    id: NonEmpty
    certificate: Certificate | None = None
    serial_number: SerialNumber | None = None
    status: V3CertificateStatus | None = None
    metadata: dict[str, Any] | None = None


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


class Dms(_Data):
    """models.DMS. Source: lamassuiot/lamassuiot core/pkg/models/dms.go, backend/pkg/middlewares/eventpub/dms.go."""

    id: NonEmpty
    name: str | None = None


class BindIdentity(_Data):
    """``dms.bind-device-id``: models.BindIdentityToDeviceOutput (the certificate now identifying a device).

    Source: lamassuiot/lamassuiot core/pkg/models/dms.go (BindIdentityToDeviceOutput),
    backend/pkg/middlewares/eventpub/dms.go (BindIdentityToDevice).
    """

    certificate: Certificate | None = None
    dms: Dms | None = None
    device: Device | None = None


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

    @property
    def fields(self) -> list[str]:
        if issubclass(self.model, RootModel):
            return ["(see schema)"]
        return list(self.model.model_fields)

    @property
    def schema_name(self) -> str:
        suffix = "" if _directions_of(self.event_type) == {self.direction} else f".{self.direction.value}"
        return f"{self.event_type}{suffix}"


_V1, _V2, _V3 = Generation.V1, Generation.V2_0, Generation.V3
_CMD, _REPLY = Direction.COMMAND, Direction.REPLY

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
    EventSpec("io.lamassuiot.ca.create", _V2, _CMD, V2Ca, "a CA was created"),
    EventSpec("io.lamassuiot.certificate.update", _V2, _CMD, V2Certificate, "a certificate's status changed"),
    EventSpec("io.lamassuiot.device.create", _V2, _CMD, V2Device, "a device was registered"),
    EventSpec("ca.create", _V3, _CMD, CaCertificate, "a CA was created"),
    EventSpec("ca.import", _V3, _CMD, CaCertificate, "a CA was imported"),
    EventSpec("ca.status.update", _V3, _CMD, Update[CaCertificate], "a CA's status changed"),
    EventSpec("ca.metadata.update", _V3, _CMD, Update[CaCertificate], "a CA's metadata changed"),
    EventSpec("certificate.create", _V3, _CMD, Certificate, "a certificate was issued"),
    EventSpec("certificate.import", _V3, _CMD, Certificate, "a certificate was imported"),
    EventSpec("ca.sign.certificate", _V3, _CMD, Certificate, "a CA signed a certificate"),
    EventSpec("certificate.status.update", _V3, _CMD, Update[Certificate], "a certificate's status changed"),
    EventSpec("certificate.metadata.update", _V3, _CMD, Update[Certificate], "a certificate's metadata changed"),
    EventSpec("device.create", _V3, _CMD, Device, "a device was registered"),
    EventSpec("device.status.update", _V3, _CMD, Update[Device], "a device's status changed"),
    EventSpec("device.identity.update", _V3, _CMD, Update[Device], "a device's identity slot changed"),
    EventSpec("device.metadata.update", _V3, _CMD, Update[Device], "a device's metadata changed"),
    EventSpec("dms.create", _V3, _CMD, Dms, "a DMS (registration authority) was created"),
    EventSpec("dms.update", _V3, _CMD, Update[Dms], "a DMS changed"),
    EventSpec("dms.bind-device-id", _V3, _CMD, BindIdentity, "a certificate became a device's identity"),
)

_BY_TYPE: dict[str, tuple[EventSpec, ...]] = {}
for _spec in SPECS:
    _BY_TYPE[_spec.event_type] = (*_BY_TYPE.get(_spec.event_type, ()), _spec)

# Command types whose replies are correlated by default: those the catalogue knows an answer for.
REPLY_EXPECTED: frozenset[str] = frozenset(spec.answers for spec in SPECS if spec.answers)
# Reply types that answer a command (as opposed to unsolicited notifications from AWS).
ANSWER_TYPES: frozenset[str] = frozenset(spec.event_type for spec in SPECS if spec.answers)


def _directions_of(event_type: str) -> set[Direction]:
    return {spec.direction for spec in _BY_TYPE.get(event_type, ())}


def specs_for(event_type: str) -> tuple[EventSpec, ...]:
    return _BY_TYPE.get(event_type, ())


def is_known(event_type: str) -> bool:
    return event_type in _BY_TYPE


def check_data(event_type: str, data: Any, direction: Direction | None = None) -> str | None:
    """Why ``data`` does not fit the catalogue model of ``event_type``, or None (also for unknown types).

    A type known in both directions (v1 ``io.lamassu.iotcore.*.status.update``) is checked against
    the model of ``direction`` when given, else it passes if either model accepts it.
    """
    specs = _BY_TYPE.get(event_type)
    if not specs:
        return None
    if direction is not None:
        specs = tuple(spec for spec in specs if spec.direction == direction) or specs
    problems = []
    for spec in specs:
        try:
            spec.model.model_validate(data)
            return None
        except ValidationError as exc:
            problems.append(describe(exc))
    return " | ".join(problems)


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One line naming each offending data field, e.g. ``data.updated.status: Input should be ...``."""
    parts = []
    errors = exc.errors(include_url=False)
    for error in errors[:limit]:
        path = ".".join(["data", *(str(part) for part in error["loc"])])
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
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lamassu-aws-connector/events/{spec.schema_name}.json",
            "title": f"{spec.event_type} data ({spec.generation.value}, {spec.direction.value})",
            "description": inspect.cleandoc(spec.model.__doc__ or spec.summary),
            **{key: value for key, value in schema.items() if key not in ("title", "description")},
        }
        yield spec.schema_name, schema


class DataCheck:
    """``validation.data`` for outbound events: off, warn (forward, count, log) or enforce (reject)."""

    def __init__(self, mode: Literal["off", "warn", "enforce"], metrics: Metrics) -> None:
        self._mode = mode
        self._metrics = metrics

    def rejection(self, event: CloudEvent, fields: dict[str, Any]) -> str | None:
        """The reason to dead-letter ``event``, or None to forward it. Unknown types cost one dict lookup."""
        if self._mode == "off" or event.type not in _BY_TYPE:
            return None
        problem = check_data(event.type, event.data, Direction.COMMAND)
        if problem is None:
            return None
        self._metrics.events_invalid_data.labels(event.type, self._mode).inc()
        if self._mode == "enforce":
            return f"data does not fit the catalogue model of {event.type}: {problem}"
        log.warning("outbound.invalid_data", **fields, reason=problem, action="forwarded (validation.data: warn)")
        return None
