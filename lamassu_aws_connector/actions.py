"""Reply actions (opt-in, ``actions.enabled``): what the Go lamassu-aws-connector did with some replies,
done against the Lamassu v3 CA API, before the reply is relayed.

========================================================  ================================================
reply (SQS ``lamassu-response``)                          action
========================================================  ================================================
``io.lamassu.iotcore.ca.registration.response-code``      a fresh key and a CSR whose CN is the code, signed
                                                          by the Lamassu CA (``POST /v1/cas/{id}/certificates
                                                          /sign``), then ``io.lamassu.iotcore.ca.registration
                                                          .signed-code`` to ``sqs.command_queue``
``io.lamassu.iotcore.cert.status.update`` ``REVOKED``     ``PUT /v1/certificates/{sn}/status`` REVOKED
                                                          (already revoked counts as done)
anything else (other statuses, ``ca.status.update``, ...)  none: relayed as before
========================================================  ================================================

**Order.** The action runs first and the reply is relayed after it, so a reply that waits for its
action is never relayed twice; the reply is deleted from SQS only once its action succeeded (the
signed-code confirmed by SQS) and its relay was confirmed, or once it was dead-lettered.

**Failures** (decided here with the outcomes.py vocabulary, :func:`classify_answer`,
:func:`classify_exception`):

* PERMANENT, a Lamassu 4xx carrying Lamassu's ``{"err": ...}`` (unknown CA or certificate, a status
  change Lamassu refuses), or a reply whose data the action cannot use: dead-lettered to the reply
  DLQ as ``action_rejected``.
* TRANSIENT, a timeout, 5xx, 408 or 429: retried in place with capped, jittered backoff
  (``actions.retry_max_backoff_seconds``) while the reply flow keeps the reply invisible; after
  ``actions.max_attempts`` dead-lettered as ``action_failed``.
* DEPENDENCY, the CA unreachable (refused, reset, connect timeout), TLS refused, 401/403, a 3xx or a
  4xx that is not Lamassu's (a wrong ``actions.lamassu_ca.url`` answers 404 without ``err``), or SQS
  away for the signed-code: ``lamassu_ca`` (or ``sqs_command_queue``) down in ``/readyz``, the reply is
  left unsettled in SQS and comes back after its visibility timeout; never dead-lettered.

**No double signing.** Each reply is known by a hash of its type, source, id and data. A bounded
memory (:data:`MEMORY_LIMIT` replies, oldest forgotten first) keeps the replies whose action is done,
so a reply received again (its relay was unroutable, its delete failed, the Lambda sent it twice) is
relayed without a second action, and the signed-code of a reply whose send failed, so it is sent again
rather than signed again. Copies of one reply in flight at once wait for each other. The memory does
not survive a restart: a reply whose action was done but which was not deleted before the process
died is acted on again (a second verification certificate and signed-code; a revocation finds the
certificate already revoked). The private key of a verification certificate lives only inside
:func:`registration_csr`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import os
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from .claimcheck import Abandoned
from .config import APP_ID, ActionsConfig, LamassuCaConfig, Settings, mask_url
from .events import CloudEvent, ParsedEvent, Rejection, parse_structured
from .health import COMMAND_QUEUE, DependencyHealth
from .logs import get_logger
from .metrics import Metrics
from .outcomes import (
    REPLY_ACTION,
    ErrorCode,
    Outcome,
    aws_error_code,
    classify_sqs_entry_failure,
    classify_sqs_error,
    exception_chain,
)

if TYPE_CHECKING:
    from cryptography import x509

    from .outbound import OutboundPipeline
    from .sqs import QueueInfo, SqsGateway

log = get_logger(__name__)

LAMASSU_CA = "lamassu_ca"  # the dependency name in /readyz and lamassu_connector_dependency_up
PROBE_COMMON_NAME = "lamassu-aws-connector-check"  # a CA common name nobody uses: probes and check-config
PROBE_SECONDS = 10.0  # while the CA is down, how often readiness asks whether it is back

SIGN = "sign_registration_code"
REVOKE = "revoke_certificate"

REGISTRATION_CODE = "io.lamassu.iotcore.ca.registration.response-code"
CERTIFICATE_STATUS = "io.lamassu.iotcore.cert.status.update"
SIGNED_CODE = "io.lamassu.iotcore.ca.registration.signed-code"

MEMORY_LIMIT = 10_000  # replies whose action is done, remembered (about 100 bytes each)
SIGNED_LIMIT = 1_000  # signed-codes made and not yet confirmed by SQS (about 4 KiB each)
_CN_MAX = 64  # X.509 upper bound of a common name (RFC 5280 ub-common-name)
_MAX_CA_PAGES = 20  # GET /v1/cas/cn/{cn} pages followed
_CA_PAGE_SIZE = 100
_NETWORK_RETRIES = 2  # quick repeats of a request whose connection dropped, before it counts
_SIGNED_CODE_IDS = uuid.UUID("3f0b7c52-8d7e-4c47-9a35-5f1d6c0e2b71")  # uuid5 namespace of signed-code ids


# ------------------------------------------------------------------------------------------------
# What the reply flow does after an action
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Relay the reply (no code, not held), dead-letter it with ``code``, or leave it in SQS (held)."""

    code: ErrorCode | None = None
    reason: str = ""
    held: bool = False


RELAY = Verdict()
HOLD = Verdict(held=True)


# ------------------------------------------------------------------------------------------------
# Failures
# ------------------------------------------------------------------------------------------------


class LamassuError(Exception):
    """A Lamassu CA request failed. ``status``: its metric label; ``http_status``: the code, if one came."""

    def __init__(
        self, operation: str, outcome: Outcome, status: str, message: str, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.outcome = outcome
        self.status = status
        self.http_status = http_status


class CommandNotSent(Exception):
    """The signed-code did not reach SQS: PERMANENT (SQS refuses it) or DEPENDENCY (SQS away)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class Refused(Exception):
    """The action cannot be done for this reply as it is: its data, or Lamassu's answer about it."""


def classify_answer(http_status: int, lamassu_error: bool) -> Outcome:
    """A Lamassu CA answer that is not 2xx. ``lamassu_error``: the body is Lamassu's ``{"err": ...}``.

    401/403 are the connector's credentials, 3xx and a 4xx without Lamassu's error body are something
    else answering (a wrong URL): dependency trouble, never the reply's fault. Only a 4xx Lamassu
    explains is about the reply."""
    if http_status in (401, 403):
        return Outcome.DEPENDENCY
    if http_status in (408, 429) or http_status >= 500:
        return Outcome.TRANSIENT
    if 400 <= http_status < 500 and lamassu_error:
        return Outcome.PERMANENT
    return Outcome.DEPENDENCY


def _tls_cause(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLError | aiohttp.ClientSSLError) for e in exception_chain(exc))


def classify_exception(exc: BaseException) -> tuple[Outcome, str]:
    """A Lamassu CA request raised: (outcome, status label). A read timeout is the request's trouble
    (TRANSIENT); a CA that cannot be reached or whose TLS fails is a dependency."""
    if _tls_cause(exc):
        return Outcome.DEPENDENCY, "tls"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Outcome.DEPENDENCY, "unreachable"  # refused, no route, DNS, connect timeout
    if isinstance(exc, TimeoutError):
        return Outcome.TRANSIENT, "timeout"
    return Outcome.DEPENDENCY, "unreachable"  # reset, disconnected, any client error never seen


def _status_label(http_status: int) -> str:
    if str(http_status) in ("400", "401", "403", "404", "409", "429"):
        return str(http_status)
    return f"{min(max(http_status // 100, 2), 5)}xx"


# ------------------------------------------------------------------------------------------------
# The Lamassu v3 CA API (the operations the actions need)
# ------------------------------------------------------------------------------------------------


class LamassuCa(Protocol):
    async def ca(self, ca_id: str) -> dict[str, Any]: ...
    async def cas_by_common_name(self, common_name: str) -> list[dict[str, Any]]: ...
    async def sign(self, ca_id: str, csr: str, profile_id: str | None) -> dict[str, Any]: ...
    async def certificate(self, serial_number: str) -> dict[str, Any]: ...
    async def set_certificate_status(self, serial_number: str, status: str, reason: str) -> dict[str, Any]: ...


class LamassuCaClient:
    """HTTP client of the Lamassu v3 CA service (``<actions.lamassu_ca.url>/v1/...``): bearer token
    and/or mutual TLS; every request counted by operation and status, timed, and reported to
    :class:`DependencyHealth` as ``lamassu_ca``."""

    def __init__(self, config: LamassuCaConfig, metrics: Metrics, health: DependencyHealth) -> None:
        self._config = config
        self._base = config.url.rstrip("/")  # paths carry /v1: the logs name what was asked
        self._metrics = metrics
        self._health = health
        self._session: aiohttp.ClientSession | None = None
        token = config.bearer_token.get_secret_value() if config.bearer_token is not None else None
        self._token = token
        self._token_stamp = self._token_file_stamp()

    def _token_file_stamp(self) -> tuple[int, int] | None:
        if not self._config.bearer_token_file:
            return None
        try:
            stat = os.stat(self._config.bearer_token_file)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _authorization(self) -> dict[str, str]:
        """The Authorization header. A bearer_token_file is read again whenever it changes, so a token
        refreshed in place (a JWT expires; a sidecar or a rotated Secret rewrites the file) is used
        without a restart; an unreadable or empty file keeps the last token."""
        stamp = self._token_file_stamp()
        if stamp is not None and stamp != self._token_stamp and self._config.bearer_token_file:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                token = Path(self._config.bearer_token_file).read_text(encoding="utf-8").strip()
                if token:
                    self._token, self._token_stamp = token, stamp
                    log.info("actions.token_reloaded", bearer_token_file=self._config.bearer_token_file)
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an https:// URL (raises ssl.SSLError / OSError for unusable files)."""
        if not self._config.url.startswith("https://"):
            return None
        tls = self._config.tls
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if not tls.verify:
            log.warning(
                "actions.tls_verification_disabled",
                detail="actions.lamassu_ca.tls.verify is false: the Lamassu CA is not authenticated",
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def __aenter__(self) -> LamassuCaClient:
        headers = {"Accept": "application/json", "User-Agent": APP_ID}
        context = self.ssl_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else True, limit=16),
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_seconds),
            headers=headers,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One request; the JSON answer of a 2xx, else LamassuError (classified)."""
        assert self._session is not None, "use the client as an async context manager"
        url = self._base + path
        data = orjson.dumps(body) if body is not None else None
        headers = self._authorization()
        if body is not None:
            headers["Content-Type"] = "application/json"
        dropped = 0
        while True:
            started = time.monotonic()
            try:
                async with self._session.request(
                    method, url, data=data, headers=headers, params=params, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    http_status = response.status
            except Exception as exc:
                outcome, label = classify_exception(exc)
                self._observe(operation, label, "error", started)
                stale = isinstance(exc, aiohttp.ServerDisconnectedError) or (
                    isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)
                )
                if label == "unreachable" and stale and dropped < _NETWORK_RETRIES:
                    dropped += 1  # a pooled connection the CA (or a proxy) closed: try a fresh one
                    await asyncio.sleep(0.1 * dropped)
                    continue
                if outcome is Outcome.DEPENDENCY:  # a read timeout is this request's trouble, not the CA's state
                    self._health.down(LAMASSU_CA, label, repr(exc))
                raise LamassuError(operation, outcome, label, f"{method} {path}: {label}: {exc!r}"[:500]) from exc
            break
        label = _status_label(http_status)
        self._observe(operation, label, f"{min(max(http_status // 100, 2), 5)}xx", started)
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = None
        if 200 <= http_status < 300:
            self._health.up(LAMASSU_CA)
            return answer
        err = answer.get("err") if isinstance(answer, dict) else None
        lamassu_error = isinstance(err, str)
        detail = str(err) if lamassu_error else raw[:200].decode("utf-8", "replace")
        outcome = classify_answer(http_status, lamassu_error)
        if outcome is Outcome.DEPENDENCY:
            error = {401: "unauthorized", 403: "forbidden"}.get(http_status, f"http_{http_status}")
            self._health.down(LAMASSU_CA, error, f"{method} {path} answered {http_status}: {detail}")
        else:
            # Lamassu answered: with a refusal (the reply's fault) or a 5xx / 408 / 429 (this request's
            # trouble, retried and counted per reply): the CA is there, readiness does not wait on it.
            self._health.up(LAMASSU_CA)
        message = f"{method} {path} answered {http_status}: {detail or '(no body)'}"
        raise LamassuError(operation, outcome, label, message[:500], http_status)

    def _observe(self, operation: str, status: str, status_class: str, started: float) -> None:
        self._metrics.lamassu_ca_requests.labels(operation, status).inc()
        self._metrics.lamassu_ca_latency.labels(status_class).observe(time.monotonic() - started)

    async def _object(self, operation: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = await self._request(operation, method, path, body)
        if not isinstance(answer, dict):
            raise LamassuError(operation, Outcome.TRANSIENT, "2xx", f"{method} {path}: the answer is not a JSON object")
        return answer

    async def ca(self, ca_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._object("get_ca", "GET", f"/v1/cas/{_segment(ca_id)}")
        return answer

    async def probe(self) -> None:
        """One cheap authenticated read, so readiness learns the CA is back without waiting for a reply
        to act on (a CA by a common name nobody uses: 200 with nothing, or 404). Raises as requests do."""
        path = f"/v1/cas/cn/{_segment(PROBE_COMMON_NAME)}"
        with contextlib.suppress(LamassuError):  # a refusal is an answer: _request has told readiness
            await self._request("probe", "GET", path, params={"page_size": "1"})

    async def cas_by_common_name(self, common_name: str) -> list[dict[str, Any]]:
        """Every CA with this common name (Lamassu keeps several: reissued, imported twice)."""
        found: list[dict[str, Any]] = []
        bookmark = ""
        for _ in range(_MAX_CA_PAGES):
            params = {"page_size": str(_CA_PAGE_SIZE)}
            if bookmark:
                params["bookmark"] = bookmark
            path = f"/v1/cas/cn/{_segment(common_name)}"
            answer = await self._request("get_cas_by_cn", "GET", path, params=params)
            if not isinstance(answer, dict):
                raise LamassuError("get_cas_by_cn", Outcome.TRANSIENT, "2xx", "the CA list is not a JSON object")
            found.extend(item for item in answer.get("list") or [] if isinstance(item, dict))
            bookmark = str(answer.get("next") or "")
            if not bookmark:
                break
        return found

    async def sign(self, ca_id: str, csr: str, profile_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"csr": csr}
        if profile_id:
            body["profile_id"] = profile_id
        answer: dict[str, Any] = await self._object(
            "sign_certificate", "POST", f"/v1/cas/{_segment(ca_id)}/certificates/sign", body
        )
        return answer

    async def certificate(self, serial_number: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._object("get_certificate", "GET", f"/v1/certificates/{serial_number}")
        return answer

    async def set_certificate_status(self, serial_number: str, status: str, reason: str) -> dict[str, Any]:
        body = {"status": status, "revocation_reason": reason}
        answer: dict[str, Any] = await self._object(
            "update_certificate_status", "PUT", f"/v1/certificates/{serial_number}/status", body
        )
        return answer


def _segment(value: str) -> str:
    return quote(value, safe="")


# ------------------------------------------------------------------------------------------------
# The signed-code command, on sqs.command_queue like a forwarded event
# ------------------------------------------------------------------------------------------------


class CommandSink(Protocol):
    async def send(self, parsed: ParsedEvent, fields: dict[str, Any]) -> None: ...


class CommandSender:
    """Sends a command the connector made (the signed-code) to ``sqs.command_queue`` with the entry a
    forwarded event gets (``ce-*`` attributes, ``ce-correlationid``, FIFO ids, claim-check), and
    returns once SQS confirmed it. SQS answers are classified as in the outbound flow."""

    def __init__(
        self,
        outbound: OutboundPipeline,
        sqs: SqsGateway,
        queue: QueueInfo,
        health: DependencyHealth,
        keep_trying: Callable[[], bool],
    ) -> None:
        self._outbound = outbound
        self._sqs = sqs
        self._queue = queue
        self._health = health
        self._keep_trying = keep_trying

    async def send(self, parsed: ParsedEvent, fields: dict[str, Any]) -> None:
        try:
            entry, _ = await self._outbound.entry_for(parsed, None, fields, self._keep_trying)
        except Rejection as rejection:
            raise CommandNotSent(Outcome.PERMANENT, f"{rejection.code.value}: {rejection.message}") from rejection
        except Abandoned as exc:
            raise CommandNotSent(Outcome.DEPENDENCY, "S3 is away (claim-check) and the connector stops") from exc
        try:
            response = await self._sqs.send_batch(self._queue, [{"Id": "0", **entry}])
        except Exception as exc:
            outcome = classify_sqs_error(exc)
            if outcome is Outcome.DEPENDENCY:
                self._health.down(COMMAND_QUEUE, aws_error_code(exc), str(exc))
            raise CommandNotSent(outcome, f"SendMessageBatch: {aws_error_code(exc)}: {str(exc)[:300]}") from exc
        for failure in response.get("Failed", []):
            code, message = str(failure.get("Code", "unknown")), str(failure.get("Message", ""))
            outcome = classify_sqs_entry_failure(code, others_succeeded=False)
            if outcome is not Outcome.PERMANENT:
                self._health.down(COMMAND_QUEUE, code, message)
                outcome = Outcome.DEPENDENCY
            raise CommandNotSent(outcome, f"SQS failed the entry: {code}: {message[:300]}")
        if not response.get("Successful"):
            raise CommandNotSent(Outcome.DEPENDENCY, "SQS confirmed nothing")
        self._health.up(COMMAND_QUEUE)


# ------------------------------------------------------------------------------------------------
# Pure helpers: serials, reply identity, the CSR, the signed-code event
# ------------------------------------------------------------------------------------------------


def normalize_serial(value: str) -> str:
    """A serial number as Lamassu v3.5+ names it: lower-case hex of the number's bytes, no separators
    (``67-F4-0A`` -> ``67f40a``; a leading ``00`` byte, as DER pads, is dropped). ValueError if not hex."""
    text = value.strip().lower().replace("-", "").replace(":", "")
    if not text or any(char not in "0123456789abcdef" for char in text):
        raise ValueError(f"{value[:80]!r} is not a hexadecimal serial number")
    number = int(text, 16)
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big").hex()


def reply_key(event: CloudEvent) -> str:
    """What makes a reply the same reply: type, source, id and data (Lamassu ids alone are not unique)."""
    identity = orjson.dumps([event.type, event.source, event.id, event.data], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(identity).hexdigest()


def registration_csr(registration_code: str) -> str:
    """A base64 PEM CSR with CN = the registration code, on a fresh RSA 2048 key that dies here."""
    # cryptography is imported where it is used: only with actions on (≈ 15 ms at every start otherwise).
    from cryptography import x509  # noqa: PLC0415 - only with actions on
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - only with actions on
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415 - only with actions on
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - only with actions on

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_code)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode("ascii")


def _certificate(value: Any) -> x509.Certificate | None:
    """The X.509 certificate a base64 PEM string holds, or None."""
    from cryptography import x509  # noqa: PLC0415 - only with actions on

    if not isinstance(value, str) or not value:
        return None
    try:
        return x509.load_pem_x509_certificate(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def signed_code_event(
    reply: CloudEvent,
    *,
    ca_name: str,
    ca_cert: str,
    serial_number: str,
    verification_cert: str,
    now: dt.datetime | None = None,
) -> ParsedEvent:
    """``io.lamassu.iotcore.ca.registration.signed-code`` answering ``reply``: the four fields the AWS
    import Lambda reads, ``correlationid`` = the reply's id, an id derived from the reply's."""
    body = {
        "specversion": "1.0",
        "id": str(uuid.uuid5(_SIGNED_CODE_IDS, f"{reply.source}\n{reply.id}")),
        "source": APP_ID,
        "type": SIGNED_CODE,
        "subject": ca_name,
        "time": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "correlationid": reply.id,
        "data": {
            "ca_cert": ca_cert,
            "ca_name": ca_name,
            "serial_number": serial_number,
            "verification_cert": verification_cert,
        },
    }
    return parse_structured(orjson.dumps(body), repair_missing_id=False)


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """The data of a registration-code reply, checked for what the action needs."""

    ca_name: str
    registration_code: str
    ca_cert: str | None
    serial_number: str | None
    ca_id: str | None

    @classmethod
    def from_data(cls, data: Any) -> RegistrationRequest:
        if not isinstance(data, dict):
            raise Refused("the reply's data is not a JSON object")
        ca_name = _text(data, "ca_name")
        code = _text(data, "registration_code")
        if ca_name is None or code is None:
            missing = "ca_name" if ca_name is None else "registration_code"
            raise Refused(f"data.{missing} is missing or not a non-empty string")
        if len(code) > _CN_MAX or not code.isprintable():
            raise Refused(f"data.registration_code must be 1 to {_CN_MAX} printable characters (a common name)")
        ca_cert = _text(data, "ca_cert")
        if ca_cert is not None and _certificate(ca_cert) is None:
            raise Refused("data.ca_cert is not a base64 PEM X.509 certificate")
        serial = _text(data, "serial_number")
        if serial is not None:
            try:
                normalize_serial(serial)
            except ValueError as exc:
                raise Refused(f"data.serial_number: {exc}") from None
        return cls(ca_name, code, ca_cert, serial, _text(data, "ca_id"))


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) and value else None


def _ca_serial(record: dict[str, Any]) -> str | None:
    serial = record.get("serial_number")
    nested = record.get("certificate")
    if not serial and isinstance(nested, dict):
        serial = nested.get("serial_number")
    return serial if isinstance(serial, str) and serial else None


def _ca_certificate(record: dict[str, Any]) -> str | None:
    """The CA certificate (base64 PEM) of a CA record: nested since v3.2, flat before."""
    value = record.get("certificate")
    if isinstance(value, dict):
        value = value.get("certificate")
    return value if _certificate(value) is not None else None


# ------------------------------------------------------------------------------------------------
# The actions
# ------------------------------------------------------------------------------------------------


class _KeyLocks:
    """One lock per key while someone holds or waits for it: copies of a reply in flight take turns."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# How long a serial this process revoked counts as revoked without asking Lamassu again.
REVOKED_MEMORY_SECONDS = 600.0


class ReplyActions:
    """Acts on the replies that call for it; :meth:`act` tells the reply flow what to do next."""

    def __init__(
        self,
        config: ActionsConfig,
        client: LamassuCa,
        sender: CommandSink,
        metrics: Metrics,
        *,
        memory_limit: int = MEMORY_LIMIT,
        signed_limit: int = SIGNED_LIMIT,
    ) -> None:
        self._config = config
        self._client = client
        self._sender = sender
        self._metrics = metrics
        self._policy = REPLY_ACTION.with_limits(cap=config.retry_max_backoff_seconds)
        self._done: OrderedDict[str, None] = OrderedDict()  # replies whose action is done
        self._signed: OrderedDict[str, ParsedEvent] = OrderedDict()  # signed-codes SQS has not confirmed
        self._memory_limit = memory_limit
        self._signed_limit = signed_limit
        self._locks = _KeyLocks()  # by reply: copies of one reply
        self._serial_locks = _KeyLocks()  # by serial number: notices of one revocation
        self._stopping = asyncio.Event()
        # Serials this process revoked (or found revoked) lately, by when: CloudTrail reports one
        # revocation in several notices, and a second PUT would only earn a 400 and a GET.
        self._revoked: OrderedDict[str, float] = OrderedDict()

    def stop(self) -> None:
        """No more waiting between attempts: a reply still failing is left in SQS."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def action_for(self, event: CloudEvent) -> str | None:
        if event.type == REGISTRATION_CODE and self._config.sign_registration_code:
            return SIGN
        if event.type == CERTIFICATE_STATUS and self._config.revoke_certificates:
            return REVOKE
        return None

    async def act(self, parsed: ParsedEvent, fields: dict[str, Any]) -> Verdict:
        event = parsed.event
        action = self.action_for(event)
        if action is None:
            return RELAY
        if action == REVOKE and not (isinstance(event.data, dict) and event.data.get("status") == "REVOKED"):
            self._count(action, "not_needed")  # AWS reports another status: Lamassu has nothing to do
            return RELAY
        key = reply_key(event)
        async with self._locks.hold(key):
            if key in self._done:
                self._done.move_to_end(key)
                self._count(action, "duplicate")
                log.debug("actions.duplicate", **fields, action=action)
                return RELAY
            return await self._attempts(action, event, key, fields)

    async def _attempts(self, action: str, event: CloudEvent, key: str, fields: dict[str, Any]) -> Verdict:
        failures = 0
        while True:
            try:
                if action == SIGN:
                    outcome = await self._sign(event, key, fields)
                else:
                    outcome = await self._revoke(event, fields)
            except Refused as refused:
                return self._give_up(action, ErrorCode.ACTION_REJECTED, str(refused), fields)
            except CommandNotSent as exc:
                if exc.outcome is Outcome.PERMANENT:
                    reason = f"SQS refused the {SIGNED_CODE} command: {exc}"
                    return self._give_up(action, ErrorCode.ACTION_FAILED, reason, fields)
                return self._defer(action, f"the command queue is away: {exc}", fields)
            except LamassuError as exc:
                if exc.outcome is Outcome.PERMANENT:
                    return self._give_up(action, ErrorCode.ACTION_REJECTED, f"the Lamassu CA refused: {exc}", fields)
                if exc.outcome is Outcome.DEPENDENCY:
                    return self._defer(action, str(exc), fields)
                failures += 1
                if failures >= self._config.max_attempts:
                    reason = f"{action} failed {failures} times (actions.max_attempts): {exc}"
                    return self._give_up(action, ErrorCode.ACTION_FAILED, reason, fields)
                if self.stopping:
                    return self._defer(action, f"stopping after: {exc}", fields)
                delay = self._policy.delay(failures)
                self._metrics.retries.labels(self._policy.name).inc()
                log.warning(
                    "actions.retrying", **fields, action=action, attempt=failures, error=str(exc)[:300],
                    retry_in_seconds=round(delay, 2),
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            self._remember_done(key)
            self._count(action, outcome)
            return RELAY

    def _give_up(self, action: str, code: ErrorCode, reason: str, fields: dict[str, Any]) -> Verdict:
        self._count(action, "rejected" if code is ErrorCode.ACTION_REJECTED else "failed")
        log.warning("actions.gave_up", **fields, action=action, error_code=code.value, reason=reason[:500])
        return Verdict(code, reason)

    def _defer(self, action: str, reason: str, fields: dict[str, Any]) -> Verdict:
        self._count(action, "deferred")
        log.info("actions.deferred", **fields, action=action, reason=reason[:300], detail="left in SQS")
        return HOLD

    def _count(self, action: str, outcome: str) -> None:
        self._metrics.reply_actions.labels(action, outcome).inc()

    def _remember_done(self, key: str) -> None:
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self._memory_limit:
            self._done.popitem(last=False)

    # --- registration code ---------------------------------------------------------------------

    async def _sign(self, event: CloudEvent, key: str, fields: dict[str, Any]) -> str:
        command = self._signed.get(key)
        if command is None:
            command = await self._signed_code(event, fields)
            self._signed[key] = command
            while len(self._signed) > self._signed_limit:
                self._signed.popitem(last=False)
        await self._sender.send(command, fields)
        self._signed.pop(key, None)
        log.info("actions.signed_code_sent", **fields, signed_code_id=command.id)
        return "succeeded"

    async def _signed_code(self, event: CloudEvent, fields: dict[str, Any]) -> ParsedEvent:
        request = RegistrationRequest.from_data(event.data)
        ca_id, record = await self._resolve_ca(request)
        ca_cert, serial = request.ca_cert, request.serial_number
        if ca_cert is None or serial is None:
            record = record if record is not None else await self._client.ca(ca_id)
            ca_cert = ca_cert or _ca_certificate(record)
            serial = serial or _ca_serial(record)
            if ca_cert is None or serial is None:
                raise Refused(f"neither the reply nor Lamassu's record of CA {ca_id!r} has its certificate and serial")
        csr = await asyncio.to_thread(registration_csr, request.registration_code)
        issued = await self._client.sign(ca_id, csr, self._config.profile_id or None)
        verification_cert = issued.get("certificate")
        certificate = _certificate(verification_cert)
        if certificate is None or not isinstance(verification_cert, str):
            raise LamassuError(
                "sign_certificate", Outcome.TRANSIENT, "2xx", "the sign answer has no base64 PEM certificate"
            )
        from cryptography.x509.oid import NameOID  # noqa: PLC0415 - only with actions on

        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [name.value for name in names] != [request.registration_code]:
            raise Refused(
                f"CA {ca_id!r} issued the verification certificate with another subject (its issuance profile "
                "does not honour the CSR's): set actions.profile_id to a profile that keeps the subject"
            )
        log.info("actions.code_signed", **fields, ca_id=ca_id, ca_name=request.ca_name)
        return signed_code_event(
            event, ca_name=request.ca_name, ca_cert=ca_cert, serial_number=serial, verification_cert=verification_cert
        )

    async def _resolve_ca(self, request: RegistrationRequest) -> tuple[str, dict[str, Any] | None]:
        """The Lamassu CA id: ``data.ca_id``, else ``actions.ca_ids[ca_name]``, else the CA with that
        common name whose serial number is the reply's (the only one, without a serial)."""
        if request.ca_id:
            return request.ca_id, None
        mapped = self._config.ca_ids.get(request.ca_name)
        if mapped:
            return mapped, None
        candidates = await self._client.cas_by_common_name(request.ca_name)
        if request.serial_number is not None:
            wanted = normalize_serial(request.serial_number)
            candidates = [ca for ca in candidates if _same_serial(_ca_serial(ca), wanted)]
        ids = [str(ca["id"]) for ca in candidates if isinstance(ca.get("id"), str) and ca["id"]]
        if len(ids) == 1:
            return ids[0], candidates[0]
        serial = f" and serial number {request.serial_number}" if request.serial_number else ""
        if not ids:
            raise Refused(f"the Lamassu CA has no CA with common name {request.ca_name!r}{serial}")
        raise Refused(
            f"{len(ids)} Lamassu CAs have the common name {request.ca_name!r}{serial}: "
            "name the id in actions.ca_ids or in the reply's data.ca_id"
        )

    # --- revocation ----------------------------------------------------------------------------

    async def _revoke(self, event: CloudEvent, fields: dict[str, Any]) -> str:
        data = event.data if isinstance(event.data, dict) else {}
        raw = _text(data, "serial_number")
        if raw is None:
            raise Refused("data.serial_number is missing: the revoked certificate cannot be named in Lamassu")
        try:
            serial = normalize_serial(raw)
        except ValueError as exc:
            raise Refused(f"data.serial_number: {exc}") from None
        # Notices of one revocation arrive together (CloudTrail writes several): one at a time per
        # serial, so the second finds the first's result in memory instead of sending its own PUT.
        async with self._serial_locks.hold(serial):
            return await self._revoke_serial(serial, fields)

    async def _revoke_serial(self, serial: str, fields: dict[str, Any]) -> str:
        if self._recently_revoked(serial):
            log.info(
                "actions.already_revoked", **fields, serial_number=serial, seen_within_seconds=REVOKED_MEMORY_SECONDS
            )
            return "already_revoked"
        try:
            await self._client.set_certificate_status(serial, "REVOKED", self._config.revocation_reason)
        except LamassuError as exc:
            if exc.http_status != 400:
                raise
            refusal = exc  # v3 answers 400 to REVOKED -> REVOKED: is it revoked already?
        else:
            log.info("actions.certificate_revoked", **fields, serial_number=serial)
            self._remember_revoked(serial)
            return "succeeded"
        current = await self._client.certificate(serial)
        if current.get("status") == "REVOKED":
            log.info("actions.already_revoked", **fields, serial_number=serial)
            self._remember_revoked(serial)
            return "already_revoked"
        raise Refused(f"the Lamassu CA refused to revoke certificate {serial}: {refusal}")

    def _recently_revoked(self, serial: str) -> bool:
        # Only for a while: a revocation with reason certificateHold can be lifted in Lamassu, and a
        # later notice must then revoke again.
        cutoff = time.monotonic() - REVOKED_MEMORY_SECONDS
        while self._revoked and next(iter(self._revoked.values())) < cutoff:
            self._revoked.popitem(last=False)
        return serial in self._revoked

    def _remember_revoked(self, serial: str) -> None:
        self._revoked[serial] = time.monotonic()
        self._revoked.move_to_end(serial)
        while len(self._revoked) > self._memory_limit:
            self._revoked.popitem(last=False)


def _same_serial(candidate: str | None, wanted: str) -> bool:
    if candidate is None:
        return False
    try:
        return normalize_serial(candidate) == wanted
    except ValueError:
        return False


class ActionsUnusable(Exception):
    """The actions cannot start (unreadable TLS files): a configuration problem."""


@contextlib.asynccontextmanager
async def open_reply_actions(
    settings: Settings,
    metrics: Metrics,
    health: DependencyHealth,
    *,
    outbound: OutboundPipeline,
    sqs: SqsGateway,
    command_queue: QueueInfo,
) -> AsyncIterator[ReplyActions]:
    """The reply actions with their Lamassu CA client, which is closed on the way out."""
    config = settings.actions
    client = LamassuCaClient(config.lamassu_ca, metrics, health)
    try:
        await client.__aenter__()
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ActionsUnusable(f"actions.lamassu_ca.tls: {exc}") from exc
    try:
        actions: ReplyActions | None = None
        sender = CommandSender(outbound, sqs, command_queue, health, lambda: actions is None or not actions.stopping)
        actions = ReplyActions(config, client, sender, metrics)
        if config.lamassu_ca.url.startswith("http://") and config.lamassu_ca.bearer_token is not None:
            log.warning("actions.plaintext_token", detail="the bearer token goes to an http:// URL, unencrypted")
        log.info(
            "actions.enabled",
            lamassu_ca=mask_url(config.lamassu_ca.url),
            sign_registration_code=config.sign_registration_code,
            revoke_certificates=config.revoke_certificates,
            mutual_tls=config.lamassu_ca.tls.cert_file is not None,
            bearer_token=config.lamassu_ca.bearer_token is not None,
        )
        recovery = asyncio.create_task(_probe_while_down(client, health), name="lamassu-ca-probe")
        try:
            yield actions
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
    finally:
        await client.__aexit__(None, None, None)


async def _probe_while_down(client: LamassuCaClient, health: DependencyHealth) -> None:
    """While ``lamassu_ca`` is down, ask every PROBE_SECONDS: readiness comes back when the CA does,
    not when the next reply that needs it reappears (a visibility timeout later)."""
    while True:
        await asyncio.sleep(PROBE_SECONDS)
        if health.is_up(LAMASSU_CA):
            continue
        try:
            await client.probe()
        except Exception as exc:  # still away: _request has said so; try again later
            log.debug("actions.probe_failed", error=str(exc)[:200])
