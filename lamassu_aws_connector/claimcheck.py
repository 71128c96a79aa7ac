"""Claim-check for events too big for SQS: the data goes to S3, the SQS message points at it.

Outbound, an event whose SQS message would exceed ``claim_check.threshold_bytes`` has its ``data``
(or ``data_base64``) stored in ``claim_check.bucket`` under a key derived from the SHA-256 of the
data, so a redelivered event overwrites the same object instead of leaving a second one. The SQS
message is the event without its data plus the CloudEvents ``dataref`` extension
(``s3://bucket/key``), and the SQS attribute ``ce-dataref``. The object is stored before the SQS send
and the AMQP delivery is acked only after SQS confirmed, so a crash in between leaves at worst an
object nobody points at, never a message pointing at nothing.

Inbound, a reply carrying an ``s3://`` dataref and no data gets its data back before it is
published to RabbitMQ (``claim_check.resolve_replies``): Lamassu services cannot read S3.

How the bytes map: ``data_base64`` is stored decoded; a string ``data`` with a non-JSON content
type is stored as UTF-8 text; any other ``data`` is stored as its JSON serialization. Resolving
reads ``datacontenttype`` (absent = JSON): JSON types become ``data`` parsed from JSON, ``text/*`` and
XML types a ``data`` string, anything else ``data_base64``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import orjson
from botocore.exceptions import ClientError

from .config import ClaimCheckConfig, SqsConfig
from .events import ParsedEvent, parse_structured
from .health import S3, DependencyHealth
from .logs import get_logger
from .metrics import Metrics
from .outcomes import S3_PUT, Outcome, aws_error_code, classify_s3_get_error, failed_and

log = get_logger(__name__)


class Abandoned(Exception):
    """Storing was given up because the delivery can no longer be acked: RabbitMQ redelivers it."""


class Unresolvable(Exception):
    """A dataref that can never be resolved as it is (no such object, no access, bad data)."""


class BucketMissing(Exception):
    pass


def is_json_type(content_type: str | None) -> bool:
    media_type = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def _is_text_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("text/") or media_type.endswith(("/xml", "+xml"))


def split_data(event: dict[str, Any]) -> tuple[bytes, str] | None:
    """Take the data out of a structured event: (bytes to store, content type); None if it has none."""
    content_type = event.get("datacontenttype") or "application/json"
    if event.get("data_base64") is not None:
        payload = base64.b64decode(event.pop("data_base64"))
        event.pop("data", None)
        return payload, content_type
    if "data" not in event:
        return None
    data = event.pop("data")
    if isinstance(data, str) and not is_json_type(content_type):
        return data.encode("utf-8"), content_type
    return orjson.dumps(data), content_type


def join_data(event: dict[str, Any], payload: bytes) -> None:
    """Put stored data back into a structured event (the inverse of :func:`split_data`)."""
    content_type = event.get("datacontenttype")
    if is_json_type(content_type):
        try:
            event["data"] = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Unresolvable(f"referenced data is not JSON ({exc.msg}), as datacontenttype says") from None
        return
    if content_type is not None and _is_text_type(content_type):
        try:
            event["data"] = payload.decode("utf-8")
            return
        except UnicodeDecodeError:
            pass
    event["data_base64"] = base64.b64encode(payload).decode("ascii")


# S3's own limit: a key is at most 1024 bytes of UTF-8. A dataref beyond it names no object that can
# exist: the reply's fault, whatever S3 answers (LocalStack drops the connection). Buckets are checked
# against the configured ones.
S3_MAX_KEY_BYTES = 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not url.startswith("s3://") or not bucket or not key:
        raise Unresolvable(f"dataref {url[:200]!r} is not an s3://bucket/key URL")
    if len(key.encode("utf-8", "surrogatepass")) > S3_MAX_KEY_BYTES:
        raise Unresolvable(f"dataref {url[:200]!r}... has a key longer than S3's {S3_MAX_KEY_BYTES} bytes")
    return bucket, key


class ClaimCheck:
    """The S3 side: store outbound data, fetch referenced reply data. Retries are the callers' policy."""

    def __init__(self, config: ClaimCheckConfig, sqs: SqsConfig, metrics: Metrics) -> None:
        self.config = config
        self._sqs = sqs
        self._metrics = metrics
        self._stack = AsyncExitStack()
        self._client: Any = None
        self.health: DependencyHealth | None = None  # told when S3 goes away and comes back

    @property
    def enabled(self) -> bool:
        """Outbound claim-check is on (a bucket is configured)."""
        return bool(self.config.bucket)

    @property
    def reply_buckets(self) -> frozenset[str]:
        """Buckets a reply's dataref may name: ``bucket`` and ``reply_buckets``, never any other."""
        return frozenset(name for name in (self.config.bucket, *self.config.reply_buckets) if name)

    def threshold(self, queue_limit: int) -> int:
        configured = self.config.threshold_bytes
        return queue_limit if configured is None else min(configured, queue_limit)

    async def __aenter__(self) -> ClaimCheck:
        # Imported here: with claim-check off (the default) a start never loads the botocore client.
        from aiobotocore.config import AioConfig  # noqa: PLC0415
        from aiobotocore.session import get_session  # noqa: PLC0415

        endpoint = self.config.endpoint_url or self._sqs.endpoint_url
        client_config = AioConfig(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=self._sqs.connect_timeout_seconds,
            read_timeout=60,
            # LocalStack and other S3 look-alikes answer on one host name: no bucket sub-domains.
            s3={"addressing_style": "path"} if endpoint else {},
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client("s3", region_name=self._sqs.region, endpoint_url=endpoint, config=client_config)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def check_bucket(self, *, create: bool) -> None:
        """Fail early on a bucket that does not exist; a 403 is fine (least privilege has no ListBucket)."""
        bucket = self.config.bucket
        try:
            await self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 403:
                log.info("claimcheck.bucket_unchecked", bucket=bucket, reason="no permission to HeadBucket")
                return
            if status != 404:
                raise
        if not create:
            raise BucketMissing(f"S3 bucket {bucket!r} of claim_check.bucket does not exist")
        params: dict[str, Any] = {"Bucket": bucket}
        if self._sqs.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self._sqs.region}
        await self._client.create_bucket(**params)
        log.info("claimcheck.bucket_created", bucket=bucket)

    async def check_in(
        self, parsed: ParsedEvent, entry: dict[str, Any], fields: dict[str, Any], keep_trying: Callable[[], bool]
    ) -> dict[str, Any] | None:
        """Store the event's data in S3 and return the slimmed SQS entry; None if it has no data.

        S3 failures are retried with capped backoff for as long as ``keep_trying()`` holds; then
        :class:`Abandoned` is raised.
        """
        event = orjson.loads(parsed.body)
        split = split_data(event)
        if split is None:
            return None
        payload, content_type = split
        key = f"{self.config.key_prefix}{hashlib.sha256(payload).hexdigest()}"
        url = f"s3://{self.config.bucket}/{key}"
        params: dict[str, Any] = {
            "Bucket": self.config.bucket,
            "Key": key,
            "Body": payload,
            "ContentType": content_type,
            "ServerSideEncryption": self.config.server_side_encryption,
        }
        if self.config.kms_key_id:
            params["SSEKMSKeyId"] = self.config.kms_key_id
        policy = S3_PUT.with_limits(cap=self.config.retry_max_backoff_seconds)
        failures = 0

        def retry(exc: BaseException) -> bool:
            nonlocal failures
            failures += 1
            self._metrics.s3_errors.labels("PutObject", aws_error_code(exc)).inc()
            if self.health is not None:
                self.health.down(S3, aws_error_code(exc), str(exc))
            # The outage is one dependency.down line; each event says why once, then quietly.
            (log.warning if failures == 1 else log.debug)(
                "claimcheck.put_failed",
                **fields,
                bucket=self.config.bucket,
                key=key,
                error=aws_error_code(exc),
                detail=str(exc)[:300],
                retrying=keep_trying(),
            )
            return keep_trying()

        try:
            wait = self.health.wait_recovery if self.health is not None else None
            async for attempt in policy.retrying(failed_and(retry), sleep=wait):
                with attempt:
                    await self._client.put_object(**params)
        except Exception as exc:
            if keep_trying():
                raise
            raise Abandoned(str(exc)) from exc
        if self.health is not None:
            self.health.up(S3)
        self._metrics.claim_checked.inc()
        self._metrics.claim_checked_bytes.inc(len(payload))
        log.info("claimcheck.stored", **fields, dataref=url, bytes=len(payload))
        event["dataref"] = url
        slim = dict(entry)
        slim["MessageBody"] = orjson.dumps(event).decode("utf-8")
        slim["MessageAttributes"] = {
            **entry["MessageAttributes"],
            "ce-dataref": {"DataType": "String", "StringValue": url},
        }
        return slim

    async def resolve(self, parsed: ParsedEvent, fields: dict[str, Any]) -> ParsedEvent | None:
        """The reply with its referenced data put back and dataref dropped; None if nothing to resolve.

        Raises :class:`Unresolvable` for what retrying cannot fix (no such object or bucket, too big,
        not the data its content type says), anything else while S3 is away or refuses the role.
        """
        dataref = parsed.event.extension("dataref")
        if not isinstance(dataref, str) or not dataref.startswith("s3://"):
            return None
        if parsed.event.data is not None or parsed.event.data_base64 is not None:
            return None  # the data is there already; the reference is informational
        bucket, key = parse_s3_url(dataref)
        allowed = self.reply_buckets
        if bucket not in allowed:
            # A reply must not make the connector fetch (and publish) whatever else its role can read.
            names = ", ".join(sorted(allowed)) or "none: set claim_check.bucket or claim_check.reply_buckets"
            raise Unresolvable(f"{dataref} is outside the buckets replies may name ({names})")
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength", 0))
            if size > self.config.max_bytes:
                response["Body"].close()
                raise Unresolvable(f"{dataref} holds {size} bytes, more than claim_check.max_bytes")
            async with response["Body"] as stream:
                payload: bytes = await stream.read()
        except Unresolvable:
            raise
        except Exception as exc:
            self._metrics.s3_errors.labels("GetObject", aws_error_code(exc)).inc()
            if classify_s3_get_error(exc) is Outcome.PERMANENT:
                raise Unresolvable(f"cannot read {dataref}: {aws_error_code(exc)}: {exc}") from None
            raise  # S3 away or refusing the role: the reply waits in SQS (a dependency problem)
        event = orjson.loads(parsed.body)
        event.pop("dataref", None)
        join_data(event, payload)
        resolved = parse_structured(orjson.dumps(event), repair_missing_id=False)
        self._metrics.replies_resolved.inc()
        log.info("claimcheck.resolved", **fields, dataref=dataref, bytes=len(payload))
        return resolved
