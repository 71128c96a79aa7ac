"""One validated configuration model: a YAML file, overridden by environment variables.

Environment variables win over the file. They are named ``LAMASSU_<SECTION>__<KEY>``, for
example ``LAMASSU_AMQP__URL`` or ``LAMASSU_SQS__ENDPOINT_URL``; list values are given as
JSON (``LAMASSU_AMQP__EXCHANGES='["lamassu-events","lamassu"]'``).
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "LAMASSU_"
DEFAULT_VISIBILITY_TIMEOUT = 60  # seconds: sqs.visibility_timeout when the command API is off
APP_ID = "lamassu-aws-connector"


def _optional_http_url(value: str | None) -> str | None:
    """An endpoint override: empty means the AWS default."""
    if value in (None, ""):
        return None
    assert value is not None
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    return value


class _Section(BaseModel):
    # A typo in a key must stop the daemon rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class AmqpTlsConfig(_Section):
    """TLS for amqps:// URLs; with cert_file and key_file, mutual TLS (the client proves itself too)."""

    ca_file: str | None = None  # CA bundle that signed the broker's certificate; None = system CAs
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True  # only an explicit false turns verification off, and it is logged as a warning

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not Path(value).is_file():
            raise ValueError(f"file {value!r} does not exist or is not a file")
        return value

    @field_validator("verify", mode="before")
    @classmethod
    def _explicit_boolean(cls, value: Any) -> Any:
        # Turning verification off must be deliberate: only true/false, never 0, "no", "off", "".
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError("must be true or false (verification is turned off only by an explicit false)")

    @model_validator(mode="after")
    def _pair(self) -> AmqpTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class AmqpConfig(_Section):
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    tls: AmqpTlsConfig = Field(default_factory=AmqpTlsConfig)
    exchanges: list[str] = Field(default_factory=lambda: ["lamassu-events"])
    binding_keys: list[str] = Field(default_factory=lambda: ["#"])
    queue: str = Field("lamassu_events", min_length=1)
    dead_letter_queue: str = Field("lamassu_events.dlq", min_length=1)
    prefetch: int = Field(200, ge=1, le=65535)
    reply_exchange: str = Field("lamassu-events", min_length=1)
    reply_dead_letter_queue: str = Field("lamassu-response.dlq", min_length=1)
    heartbeat_seconds: int = Field(30, ge=0)
    reconnect_interval_seconds: float = Field(5.0, gt=0)
    # Bytes of message bodies handled at once, beside the prefetch count: what waits beyond it stays
    # an unparsed body (one copy), not a parsed event and its SQS entry (about five).
    max_in_flight_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    # A message the connector died handling this many times is dead-lettered (crashguard.py).
    redelivery_limit: int = Field(3, ge=1, le=100)
    # Where the crash guard keeps its state file; an emptyDir in Kubernetes survives restarts.
    state_dir: str = Field("/tmp/lamassu-aws-connector", min_length=1)  # noqa: S108 - per-container /tmp

    @field_validator("url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        scheme = value.partition("://")[0] if "://" in value else urlsplit(value).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"must start with amqp:// or amqps:// (got scheme {scheme[:10]!r})")
        return encode_userinfo(value)

    @model_validator(mode="after")
    def _tls_needs_amqps(self) -> AmqpConfig:
        tls_files = (self.tls.ca_file, self.tls.cert_file, self.tls.key_file)
        if urlsplit(self.url).scheme != "amqps" and any(tls_files):
            raise ValueError("amqp.tls is set, but amqp.url does not start with amqps://")
        return self

    @field_validator("exchanges", "binding_keys")
    @classmethod
    def _no_empty_names(cls, value: list[str]) -> list[str]:
        if any(not item for item in value):
            raise ValueError("entries must be non-empty strings")
        return value


class SqsConfig(_Section):
    region: str = Field("us-east-1", min_length=1)
    endpoint_url: str | None = None
    command_queue: str = Field("lamassu-command", min_length=1)
    response_queue: str = Field("lamassu-response", min_length=1)
    create_queues: bool = False
    fifo_group_by: Literal["subject", "source", "type"] = "subject"
    pollers: int = Field(2, ge=1, le=64)
    wait_time_seconds: int = Field(20, ge=1, le=20)
    # 60 s; with the command API on and no value given, 2/3 of http.commands_timeout_seconds (Settings).
    visibility_timeout: int = Field(DEFAULT_VISIBILITY_TIMEOUT, ge=5, le=43200)
    unroutable_max_receives: int = Field(5, ge=1)
    # Publish attempts per reply for errors that are neither the reply's fault nor an outage (a
    # nack, a confirm timeout); then it is dead-lettered as attempts_exhausted.
    reply_max_attempts: int = Field(6, ge=1, le=100)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    # Per-message calls as signed JSON requests (sqs_wire.py) instead of through the full botocore
    # client: same credentials, signature and errors, less than half the CPU per call.
    fast_path: bool = True

    _http_endpoint = field_validator("endpoint_url")(_optional_http_url)


class ForwardConfig(_Section):
    types: list[str] = Field(default_factory=lambda: ["*"])
    linger_ms: float = Field(5.0, ge=0, le=10_000)
    max_batches_in_flight: int = Field(8, ge=1, le=128)
    # false: a partial batch leaves at once when no batch is in flight (lowest latency); true: it
    # always waits linger_ms (fewer, fuller SendMessageBatch calls at moderate rates).
    linger_when_idle: bool = False
    max_entry_attempts: int = Field(8, ge=1)
    retry_max_backoff_seconds: float = Field(20.0, gt=0)
    # Lamassu v3.5+ audit copies (audit.<type>) and error records (<type>.error), applied after
    # `types` (docs/lamassu-generations.md): an audit copy repeats the event it audits.
    audit: Literal["skip", "forward"] = "skip"
    errors: Literal["forward", "skip"] = "forward"


class ValidationConfig(_Section):
    repair_missing_id: bool = True
    # Check the data of known Lamassu event types against the catalogue (catalogue.py):
    # off, warn (forward, count, log) or enforce (dead-letter as invalid_data).
    data: Literal["off", "warn", "enforce"] = "warn"
    # The certificate of a CA or certificate in an event's data: "shape" checks that it is base64 of
    # a PEM CERTIFICATE block (≈ 2 µs); "x509" also parses it as X.509 (≈ 7 µs more per new
    # certificate). `lamassu-aws-connector validate` always parses.
    certificates: Literal["shape", "x509"] = "shape"


class CorrelationConfig(_Section):
    """Command -> reply correlation: a bounded, expiring table of commands awaiting a reply."""

    enabled: bool = True
    # Glob patterns of command types to track; None = the catalogue's commands that have a known reply.
    command_types: list[str] | None = None
    max_outstanding: int = Field(10_000, ge=1, le=10_000_000)
    timeout_seconds: float = Field(300.0, gt=0)
    # Replicas announce tracked commands and relayed replies to each other on this fanout exchange
    # (fleet.py), so correlation and POST /v1/commands work whichever replica receives a reply.
    fleet: bool = True
    fleet_exchange: str = Field("lamassu-aws-connector.fleet", min_length=1)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"
    # One info line with the counts and rates of both flows this often (0: never); the line per
    # forwarded event or relayed reply is at debug level.
    summary_seconds: float = Field(60.0, ge=0)

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class HealthConfig(_Section):
    # A flow that holds work and settles nothing for this long turns /readyz false (outbound_progress,
    # reply_progress): stuck, not merely slow.
    stall_seconds: float = Field(120.0, ge=5)
    # The queue depth gauges (RabbitMQ passive declares, SQS GetQueueAttributes) are sampled this often;
    # a sample is also what notices an SQS queue deleted while no event flows. 0: never.
    depth_seconds: float = Field(20.0, ge=0)


class ShutdownConfig(_Section):
    grace_seconds: float = Field(25.0, ge=0)


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class HttpConfig(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - probes and Prometheus reach the pod from outside
    port: int = Field(8080, ge=0, le=65535)  # 0 picks a free port (tests)
    # POST /v1/commands: send a CloudEvent to the command queue and answer with its reply.
    commands: bool = False
    commands_timeout_seconds: float = Field(30.0, gt=0, le=300)
    # Bearer token POST /v1/commands requires (the probes and /metrics stay open). Set it through
    # LAMASSU_HTTP__AUTH_TOKEN or a mounted secret file (auth_token_file), never in the ConfigMap.
    auth_token: SecretStr | None = None
    auth_token_file: str | None = None

    @model_validator(mode="after")
    def _token(self) -> HttpConfig:
        if self.auth_token_file:
            try:
                token = Path(self.auth_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"auth_token_file {self.auth_token_file!r} cannot be read: {exc.strerror}") from None
            if not token:
                raise ValueError(f"auth_token_file {self.auth_token_file!r} is empty")
            self.auth_token = SecretStr(token)
        if self.auth_token is not None and len(self.auth_token.get_secret_value()) < 16:
            raise ValueError("auth_token must be at least 16 characters")
        if self.commands and self.auth_token is None and self.host not in _LOOPBACK_HOSTS:
            raise ValueError(
                "commands is on and listens beyond loopback: set http.auth_token (or auth_token_file), "
                "or http.host: 127.0.0.1"
            )
        return self


class ClaimCheckConfig(_Section):
    """Events too big for SQS are stored in S3 and the SQS message points at them (CloudEvents dataref)."""

    bucket: str = ""  # empty: off, oversize events are dead-lettered as too_large
    key_prefix: str = "lamassu-aws-connector/"
    # SQS message size (body + attributes) above which the data goes to S3; None = the queue's limit.
    threshold_bytes: int | None = Field(None, ge=1024)
    # Larger events are dead-lettered as too_large; keep it within RabbitMQ's max_message_size
    # (16 MiB by default since RabbitMQ 4.0), which resolved replies must pass too.
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    resolve_replies: bool = True  # replies with an s3:// dataref get their data back before RabbitMQ
    # Buckets a reply's dataref may name, beside `bucket`. With neither set no dataref is ever
    # resolved (closed by default): the connector reads nothing from S3.
    reply_buckets: list[str] = Field(default_factory=list)
    server_side_encryption: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = None
    endpoint_url: str | None = None  # None = sqs.endpoint_url (LocalStack serves S3 on the same port)
    retry_max_backoff_seconds: float = Field(20.0, gt=0)

    _http_endpoint = field_validator("endpoint_url")(_optional_http_url)

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> ClaimCheckConfig:
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id is set, but server_side_encryption is not aws:kms")
        return self


# --- reply actions (actions.py) ---------------------------------------------------------------

# RFC 5280 CRLReason names as Lamassu v3 spells them (core/pkg/models/revocation_reason.go).
RevocationReason = Literal[
    "Unspecified",
    "KeyCompromise",
    "CACompromise",
    "AffiliationChanged",
    "Superseded",
    "CessationOfOperation",
    "CertificateHold",
    "RemoveFromCRL",
    "PrivilegeWithdrawn",
    "AACompromise",
]


class LamassuCaTlsConfig(AmqpTlsConfig):
    """TLS to the Lamassu CA API, as ``amqp.tls``: ``ca_file`` signed its certificate (system CAs when
    unset), ``cert_file`` + ``key_file`` give mutual TLS; only an explicit ``verify: false`` turns
    verification off."""


class LamassuCaConfig(_Section):
    # The CA service's base URL as the API gateway exposes it, e.g. https://lamassu.example/api/ca;
    # requests go to <url>/v1/...
    url: str = ""
    tls: LamassuCaTlsConfig = Field(default_factory=LamassuCaTlsConfig)
    # Bearer token (a JWT Lamassu's identity provider issued to the connector); with or without mutual
    # TLS. Set it through LAMASSU_ACTIONS__LAMASSU_CA__BEARER_TOKEN or a mounted file, never in a ConfigMap.
    bearer_token: SecretStr | None = None
    bearer_token_file: str | None = None
    timeout_seconds: float = Field(10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token_and_tls(self) -> LamassuCaConfig:
        if self.bearer_token_file:
            try:
                token = Path(self.bearer_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"bearer_token_file {self.bearer_token_file!r} cannot be read: {exc.strerror}"
                ) from None
            if not token:
                raise ValueError(f"bearer_token_file {self.bearer_token_file!r} is empty")
            self.bearer_token = SecretStr(token)
        tls_files = (self.tls.ca_file, self.tls.cert_file, self.tls.key_file)
        if self.url and urlsplit(self.url).scheme != "https" and any(tls_files):
            raise ValueError("tls is set, but url does not start with https://")
        return self


class ActionsConfig(_Section):
    """What the connector does with some replies beside relaying them (actions.py); off by default."""

    enabled: bool = False
    lamassu_ca: LamassuCaConfig = Field(default_factory=LamassuCaConfig)
    # io.lamassu.iotcore.ca.registration.response-code: sign the code with the Lamassu CA and send
    # io.lamassu.iotcore.ca.registration.signed-code to the command queue.
    sign_registration_code: bool = True
    profile_id: str = ""  # issuance profile for the verification certificate; empty: the CA's default
    # io.lamassu.iotcore.cert.status.update with status REVOKED: revoke the certificate in Lamassu.
    revoke_certificates: bool = True
    revocation_reason: RevocationReason = "Unspecified"
    # CA name (as the replies carry it) -> Lamassu v3 CA id; names not here are looked up by common name.
    ca_ids: dict[str, str] = Field(default_factory=dict)
    # Attempts per reply for timeouts, 5xx and 429; then the reply is dead-lettered as action_failed.
    max_attempts: int = Field(8, ge=1, le=100)
    retry_max_backoff_seconds: float = Field(60.0, gt=0)
    # The Go connector's GET /v1/config: the AWS IoT configuration (io.lamassu.iotcore.config.response)
    # asked for once and kept, served by the command API; a reply about a CA drops it (commands.py).
    config_cache: bool = False
    config_cache_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _url_when_enabled(self) -> ActionsConfig:
        if self.enabled and not self.lamassu_ca.url:
            raise ValueError("actions are enabled: set actions.lamassu_ca.url (e.g. https://lamassu.example/api/ca)")
        if any(not name or not ca_id for name, ca_id in self.ca_ids.items()):
            raise ValueError("ca_ids: names and ids must be non-empty strings")
        return self


# --- end reply actions --------------------------------------------------------------------------


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    amqp: AmqpConfig = Field(default_factory=AmqpConfig)
    sqs: SqsConfig = Field(default_factory=SqsConfig)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    correlation: CorrelationConfig = Field(default_factory=CorrelationConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    claim_check: ClaimCheckConfig = Field(default_factory=ClaimCheckConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)  # reply actions (actions.py)

    @model_validator(mode="after")
    def _visibility_within_command_timeout(self) -> Settings:
        # The replies a replica that dies was holding reappear after the visibility timeout: with the
        # command API on, shorter than a caller waits, so their callers on the other replicas still get
        # them. Held replies stay invisible meanwhile: their visibility is extended every half timeout.
        if self.http.commands and "visibility_timeout" not in self.sqs.model_fields_set:
            derived = int(self.http.commands_timeout_seconds * 2 / 3)
            self.sqs.visibility_timeout = max(5, min(DEFAULT_VISIBILITY_TIMEOUT, derived))
        return self

    @model_validator(mode="after")
    def _config_cache_needs_the_command_api(self) -> Settings:
        if self.actions.config_cache and not self.http.commands:
            raise ValueError(
                "actions.config_cache serves GET /v1/config through the command API: set http.commands: true"
                " (with http.auth_token)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; environment variables must override it.
        return (env_settings, init_settings)

    def visibility_advice(self) -> str | None:
        """A warning when an operator's sqs.visibility_timeout is at or above the command API's wait: a
        reply held by a replica that dies reappears only after its caller on another replica got 504."""
        if not (self.http.commands and self.sqs.visibility_timeout >= self.http.commands_timeout_seconds):
            return None
        return (
            f"sqs.visibility_timeout ({self.sqs.visibility_timeout} s) is not below http.commands_timeout_seconds"
            f" ({self.http.commands_timeout_seconds:g} s): replies a stopped replica held come back after its"
            " callers' wait; leave it unset (2/3 of the wait) or set it lower"
        )

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced, safe to print or log."""
        dumped = self.model_dump(mode="json")
        dumped["amqp"]["url"] = mask_url(self.amqp.url)
        lamassu_ca = dumped["actions"]["lamassu_ca"]  # reply actions: the token and any URL password
        lamassu_ca["url"] = mask_url(self.actions.lamassu_ca.url)
        lamassu_ca["bearer_token"] = "***" if self.actions.lamassu_ca.bearer_token is not None else None
        return dumped


class ConfigError(Exception):
    """A configuration that cannot run; the message names the offending key."""


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme, user info, the rest) of ``scheme://userinfo@rest``; None without user info.

    urlsplit ends the authority at the first ``/``, ``?`` or ``#``, so a password holding one
    unencoded would be read as a path, query or fragment (and printed). Here the user info runs to
    the last ``@``: whatever the password holds, it stays on the masked side.
    """
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return None
    return scheme, rest[:at], rest[at + 1 :]


def mask_url(url: str) -> str:
    """Replace the password of a URL (amqp://user:secret@host/) by ``***``, whatever it holds."""
    split = _split_userinfo(url)
    if split is None:
        return url
    scheme, userinfo, rest = split
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{rest}" if colon else url


# RFC 3986 user info may hold these unencoded (plus letters, digits, "-._~"); "%" keeps what the
# operator already percent-encoded.
_USERINFO_SAFE = "!$&'()*+,;=%"


def encode_userinfo(url: str) -> str:
    """Percent-encode what a password may not hold unencoded (``#``, ``/``, ``?``, ``@``, spaces,
    non-ASCII), so ``amqp://user:pa#ss@host/`` connects instead of being misread."""
    split = _split_userinfo(url)
    if split is None:
        return url
    scheme, userinfo, rest = split
    user, colon, password = userinfo.partition(":")
    encoded = quote(user, safe=_USERINFO_SAFE) + (colon + quote(password, safe=_USERINFO_SAFE) if colon else "")
    return f"{scheme}://{encoded}@{rest}"


def load_settings(path: str | Path | None) -> Settings:
    """Read the YAML file (if any), apply environment overrides, validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections at top level")
        data = loaded
    # Misspelled first: LAMASSU_AMQP_TLS__CA_FILE names no section, but it has a spelling that works.
    misspelled = _single_underscore_overrides(os.environ)
    if misspelled:
        hints = ", ".join(f"{name} (did you mean {fixed}?)" for name, fixed in misspelled)
        raise ConfigError(f"environment variable(s) not read: nested keys take two underscores: {hints}")
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
        and "__" in name
        and name[len(ENV_PREFIX) :].split("__", 1)[0].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(f"unknown configuration section in environment variable(s): {', '.join(unknown)}")
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _single_underscore_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """LAMASSU_AMQP_URL, LAMASSU_AMQP__TLS_CA_FILE and the like: meant as an override, silently ignored
    without this check. A name that is a key path once every separator is one underscore, but not
    spelled with two between the levels, is reported with the spelling that works."""
    proper = _env_names(Settings, ENV_PREFIX.rstrip("_"))
    found = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in proper.values():
            continue
        fixed = proper.get(re.sub("_+", "_", upper))
        if fixed is not None:
            found.append((name, fixed))
    return sorted(found)


def _env_names(model: type[BaseModel], prefix: str) -> dict[str, str]:
    """Every key path's environment name (sections and nested sections too, which take JSON), keyed by
    the same name with single underscores."""
    names: dict[str, str] = {}
    for key, field in model.model_fields.items():
        name = f"{prefix}__{key.upper()}" if prefix != ENV_PREFIX.rstrip("_") else f"{prefix}_{key.upper()}"
        names[re.sub("_+", "_", name)] = name
        for nested in models_in(field.annotation):
            names.update(_env_names(nested, name))
    return names


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, through Optional, unions, lists and Annotated."""
    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, BaseModel) else []
    return [model for argument in typing.get_args(annotation) for model in models_in(argument)]


_SECRET_KEY_WORDS = ("token", "password", "secret")


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] not in ("missing", "extra_forbidden") and not isinstance(error.get("input"), dict | None):
            shown = error["input"]
            if key.endswith("url") and isinstance(shown, str):
                shown = mask_url(shown)
            elif any(word in key for word in _SECRET_KEY_WORDS):
                shown = "***"  # a token given as a number or a list is still a secret
            message = f"{message} (got {shown!r})"
        lines.append(f"{key}: {message}" if key else message)  # a rule across sections has no key
    return "invalid configuration: " + "; ".join(lines)
