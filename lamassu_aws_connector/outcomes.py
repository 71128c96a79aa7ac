"""The failure model: every error the connector meets, in one of three classes, decided here.

=================  ==================================================  ====================================
class              examples                                            what the pipelines do
=================  ==================================================  ====================================
``PERMANENT``      bad JSON, not a CloudEvent, SQS says the *content*  dead-letter with an :class:`ErrorCode`
                   is invalid (:data:`SQS_CONTENT_CODES`), AMQP
                   shortstr or frame limits exceeded
``TRANSIENT``      one entry failed while SQS accepted the others;     retry the item within its attempt
                   a publish failed for no known reason                budget, then dead-letter it
``DEPENDENCY``     broker or SQS down, queue missing, credentials      hold the items, retry with backoff,
                   refused, KMS, throttling, 5xx, S3 down, *unknown*   readiness false, never dead-letter
=================  ==================================================  ====================================

Unknown means dependency: when in doubt the message is kept and the trouble reported loudly, rather
than moved where nobody looks. Everything here is a pure function or a constant, so each decision
has fast unit tests (tests/test_outcomes.py); the pipelines only act on the answers.

Also here: the one set of dead-letter error codes, the one dead-letter header builder (bounded, so
a dead-letter copy always fits in an AMQP frame), the AMQP limits a message must respect before it
is published, and the named retry policies every retry loop of the connector uses.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, ConnectionClosed
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, stop_after_delay, stop_any, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_base

APP_ID = "lamassu-aws-connector"


class Outcome(StrEnum):
    PERMANENT = "permanent"  # the item can never pass as it is: dead-letter it
    TRANSIENT = "transient"  # the item failed on its own: retry it within its attempt budget
    DEPENDENCY = "dependency"  # something the item needs is away: hold it and wait


class ErrorCode(StrEnum):
    """``x-error-code`` of a dead letter: why the message could never be delivered as it is."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_CLOUDEVENT = "not_cloudevent"
    INVALID_ATTRIBUTE = "invalid_attribute"
    TOO_LARGE = "too_large"
    SQS_REJECTED = "sqs_rejected"  # SQS refused the content (an allowlisted error code)
    INVALID_DATA = "invalid_data"  # a known Lamassu type whose data fails its catalogue model
    DATAREF_UNRESOLVED = "dataref_unresolved"  # a reply's s3:// dataref can never be read
    UNROUTABLE = "unroutable"  # no queue bound for the reply's type, sqs.unroutable_max_receives times
    AMQP_REJECTED = "amqp_rejected"  # the reply cannot be an AMQP message (shortstr, frame, encoding)
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # an item failed alone more often than its budget allows
    REDELIVERY_LIMIT = "redelivery_limit"  # the connector died while handling it, too many times
    # Reply actions (actions.py): Lamassu refused the action (a 4xx such as an unknown CA), or it
    # failed actions.max_attempts times (timeouts, 5xx, 429).
    ACTION_REJECTED = "action_rejected"
    ACTION_FAILED = "action_failed"
    # A bug in the connector must still end in a dead-letter queue, never in a redelivery loop.
    INTERNAL_ERROR = "internal_error"


# ------------------------------------------------------------------------------------------------
# AWS (SQS, S3, STS) errors
# ------------------------------------------------------------------------------------------------

# Error codes with which SQS refuses what a request *carries* (the SQS API reference, "Errors" of
# SendMessage / SendMessageBatch, and the common errors), in the JSON protocol's spelling and the
# query protocol's ``AWS.SimpleQueueService.`` one. Only these dead-letter a message. Everything
# else — missing queue, credentials, KMS, opt-in, throttling, 5xx, codes never seen — is trouble
# with a dependency, whatever the HTTP status says.
SQS_CONTENT_CODES = frozenset(
    {
        "InvalidMessageContents",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MissingParameter",
        "ValidationError",
        "BatchRequestTooLong",
        "MessageTooLong",
        "BatchEntryIdsNotDistinct",
        "InvalidBatchEntryId",
        "TooManyEntriesInBatchRequest",
        "EmptyBatchRequest",
    }
)
_QUERY_PREFIX = "AWS.SimpleQueueService."
# Entry-level codes that say the dependency, not the entry, is in trouble (a KMS key disabled, the
# queue deleted, throttling): such a failure never counts against the entry's attempt budget.
_DEPENDENCY_ENTRY_MARKERS = ("Kms", "KMS", "Throttl", "NonExistentQueue", "QueueDoesNotExist", "AccessDenied")
# "No such queue", in the query protocol's and the JSON protocol's spelling (normalized).
QUEUE_MISSING_CODES = frozenset({"NonExistentQueue", "QueueDoesNotExist"})
# S3 GetObject answers that no retry can change for that object.
S3_OBJECT_GONE_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "InvalidBucketName", "404", "InvalidObjectState"})


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it: causes, contexts, and exceptions passed as arguments
    (aiormq and aiohttp wrap the one that matters, e.g. a TLS failure). Each once, cycles ended."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def aws_error_code(exc: BaseException) -> str:
    """A short label for a failed call: the AWS error code, or the exception class."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def normalized_sqs_code(code: str) -> str:
    """``AWS.SimpleQueueService.BatchRequestTooLong``, ``BatchRequestTooLong`` and (LocalStack's
    entry failures) ``BatchRequestTooLongException`` are one code."""
    return code.removeprefix(_QUERY_PREFIX).removesuffix("Exception")


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def classify_sqs_error(exc: BaseException) -> Outcome:
    """A request to SQS raised: is it the content (PERMANENT) or a dependency (everything else)?"""
    if isinstance(exc, ClientError) and normalized_sqs_code(aws_error_code(exc)) in SQS_CONTENT_CODES:
        return Outcome.PERMANENT
    return Outcome.DEPENDENCY


def is_batch_too_long(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and normalized_sqs_code(aws_error_code(exc)) == "BatchRequestTooLong"


def classify_sqs_entry_failure(code: str, *, others_succeeded: bool) -> Outcome:
    """One entry of a SendMessageBatch came back in ``Failed``.

    A content code dead-letters it. A code naming a dependency (KMS, throttling, a missing queue)
    holds it. Any other failure counts against the entry's budget only when SQS accepted other
    entries of the same call: an entry failing alone is the entry's trouble; every entry failing is
    SQS's, and must not flush the stream into the dead-letter queue.
    """
    normalized = normalized_sqs_code(code)
    if normalized in SQS_CONTENT_CODES:
        return Outcome.PERMANENT
    if any(marker in code for marker in _DEPENDENCY_ENTRY_MARKERS):
        return Outcome.DEPENDENCY
    return Outcome.TRANSIENT if others_succeeded else Outcome.DEPENDENCY


def is_unavailable(exc: BaseException) -> bool:
    """The endpoint cannot be reached or is overloaded (network, 5xx, throttling): worth repeating soon.

    Narrower than DEPENDENCY: missing credentials are a dependency problem for the pipelines (they
    hold the messages), but at start-up they stop the daemon with a clear error instead.
    """
    if isinstance(exc, ClientError):
        code = aws_error_code(exc)
        return http_status(exc) >= 500 or "Throttl" in code or "SlowDown" in code
    return isinstance(
        exc, EndpointConnectionError | ConnectionClosedError | ConnectTimeoutError | ReadTimeoutError | HTTPClientError
    )


def classify_s3_get_error(exc: BaseException) -> Outcome:
    """Reading a reply's dataref failed: only a missing object or bucket is the reply's fault."""
    if isinstance(exc, ClientError) and aws_error_code(exc) in S3_OBJECT_GONE_CODES:
        return Outcome.PERMANENT
    return Outcome.DEPENDENCY


# ------------------------------------------------------------------------------------------------
# AMQP limits and errors
# ------------------------------------------------------------------------------------------------

SHORTSTR_MAX_BYTES = 255  # AMQP 0-9-1 shortstr: routing keys, message ids, header names
# Every header frame must fit in one frame (RabbitMQ's frame_max: 128 KiB by default, 4 KiB at the
# least). Dead-letter headers stay well below, so no copy can close the connection with FRAME_ERROR.
HEADERS_MAX_BYTES = 32 * 1024
HEADER_VALUE_MAX_BYTES = 4 * 1024
ERROR_MESSAGE_MAX_BYTES = 1024


def amqp_limit_problem(routing_key: str, message_id: str | None, headers: Mapping[str, Any] | None) -> str | None:
    """Why a message with these fields cannot be published, or None: the checks RabbitMQ and pamqp
    would make later (by raising, or by closing the connection), made before anything is sent."""
    if len(routing_key.encode("utf-8")) > SHORTSTR_MAX_BYTES:
        return f"routing key (the event type) is {len(routing_key.encode())} bytes; AMQP allows {SHORTSTR_MAX_BYTES}"
    if message_id is not None and len(message_id.encode("utf-8")) > SHORTSTR_MAX_BYTES:
        return f"message id (the event id) is {len(message_id.encode())} bytes; AMQP allows {SHORTSTR_MAX_BYTES}"
    if headers:
        for name in headers:
            if len(str(name).encode("utf-8")) > SHORTSTR_MAX_BYTES:
                return f"header name {str(name)[:40]!r}... is longer than {SHORTSTR_MAX_BYTES} bytes"
        size = headers_size(headers)
        if size > HEADERS_MAX_BYTES:
            return f"headers take {size} bytes; at most {HEADERS_MAX_BYTES} fit in an AMQP frame here"
    return None


def classify_amqp_publish_error(exc: BaseException) -> Outcome:
    """A publish raised (an unroutable return is handled apart, by the caller)."""
    if isinstance(exc, TypeError | ValueError | OverflowError | UnicodeError):
        return Outcome.PERMANENT  # the message cannot be encoded; a retry encodes it alike
    if isinstance(exc, AMQPConnectionError | ConnectionClosed | ChannelInvalidStateError | ConnectionError):
        return Outcome.DEPENDENCY
    return Outcome.TRANSIENT  # a nack, a confirm timeout, an error never seen: try again, within a budget


# ------------------------------------------------------------------------------------------------
# Dead-letter headers
# ------------------------------------------------------------------------------------------------

# The connector's own header namespaces: what a dead-letter copy writes. A copy of a consumed
# message never keeps a publisher's values for them (see dead_letter_headers).
OWN_HEADER_PREFIXES = ("x-error-", "x-original-", "x-sqs-", "x-dead-letter")
DROPPED_HEADERS_NOTE = "x-dead-letter-dropped-headers"


def is_own_header(name: str) -> bool:
    return name.lower().startswith(OWN_HEADER_PREFIXES)


def strip_own_headers(headers: dict[str, Any]) -> list[str]:
    """Remove, in place, the headers in the connector's namespaces from a consumed message: only the
    connector writes those (dead-letter provenance), so on anything it consumes they are forged or
    stale. Returns the names removed."""
    forged = [name for name in headers if is_own_header(str(name))]
    for name in forged:
        del headers[name]
    return forged


def _utf8_cut(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = f"…[{len(data)} bytes, cut]"
    return data[: max(0, limit - len(marker.encode()))].decode("utf-8", "ignore") + marker


def header_text(value: Any) -> str:
    """A header value as text a reader would write it: JSON's words and forms, not Python's repr.

    Bytes that are not UTF-8 become base64, so a copy keeps them exactly (a replacement character would not)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=header_text).decode()
    return str(value)


def headers_size(headers: Mapping[str, Any]) -> int:
    """Roughly the encoded size of a header table (names, values, type tags and lengths)."""
    return sum(len(str(name).encode()) + len(header_text(value).encode()) + 6 for name, value in headers.items())


def dead_letter_headers(
    code: str,
    message: str,
    provenance: Mapping[str, str],
    original: Mapping[str, Any] | None = None,
    *,
    droppable: Mapping[str, str | None] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The headers of a dead-letter copy, for both dead-letter queues; always fits in a frame.

    ``provenance``: what the connector knows of where the message came from (``x-original-*``,
    ``x-sqs-*``), always kept. ``original``: the message's own headers, kept for the operator and
    for replay, except names in the connector's namespaces (the copy writes those itself).
    ``droppable``: more of the connector's own (a reply's SQS attributes; None: one that cannot be a
    header, such as a Binary attribute, only named in the note). Every value is a string
    (Lamassu v2.5+ consumers accept nothing else), cut at 4 KiB; if the whole still exceeds 32 KiB
    the largest of ``original`` and ``droppable`` are left out and named in
    ``x-dead-letter-dropped-headers``. The body is never touched: it alone is what replay needs.
    """
    own = {
        "x-error-code": _utf8_cut(code, 128),
        "x-error-message": _utf8_cut(message, ERROR_MESSAGE_MAX_BYTES),
        **{name: _utf8_cut(value, HEADER_VALUE_MAX_BYTES) for name, value in provenance.items()},
        "x-dead-lettered-by": APP_ID,
        "x-dead-lettered-at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds"),
    }
    kept: dict[str, str] = {}
    for name, value in (original or {}).items():
        key = str(name)
        if is_own_header(key) or len(key.encode()) > SHORTSTR_MAX_BYTES:
            continue
        kept[key] = _utf8_cut(header_text(value), HEADER_VALUE_MAX_BYTES)
    dropped: list[str] = []
    for name, value in (droppable or {}).items():
        if value is None or len(name.encode()) > SHORTSTR_MAX_BYTES:
            dropped.append(_utf8_cut(name, 64))
        else:
            kept[name] = _utf8_cut(value, HEADER_VALUE_MAX_BYTES)
    budget = HEADERS_MAX_BYTES - headers_size(own) - 512  # room for the note itself
    size = headers_size(kept)
    for name in sorted(kept, key=lambda n: len(kept[n].encode()), reverse=True):
        if size <= budget:
            break
        size -= headers_size({name: kept.pop(name)})
        dropped.append(name)
    headers = {**kept, **own}
    if dropped:
        headers[DROPPED_HEADERS_NOTE] = _utf8_cut(",".join(sorted(dropped)), 480)
    return headers


# ------------------------------------------------------------------------------------------------
# Retry policies
# ------------------------------------------------------------------------------------------------


class _FullJitter(wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def __call__(self, retry_state: RetryCallState) -> float:
        return self._policy.delay(retry_state.attempt_number)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; optionally bounded by attempts or time.

    ``delay(n)``: a random wait in [0, min(cap, first * 2^(n-1))] after the n-th failure.
    """

    name: str
    first: float
    cap: float
    max_attempts: int | None = None
    max_seconds: float | None = None

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.first * 2 ** min(max(attempt - 1, 0), 30)))

    def with_limits(
        self, *, cap: float | None = None, max_attempts: int | None = None, max_seconds: float | None = None
    ) -> RetryPolicy:
        return RetryPolicy(
            self.name,
            self.first,
            self.cap if cap is None else cap,
            self.max_attempts if max_attempts is None else max_attempts,
            self.max_seconds if max_seconds is None else max_seconds,
        )

    def retrying(
        self,
        retry: Callable[[RetryCallState], bool],
        before_sleep: Callable[[RetryCallState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> AsyncRetrying:
        """A tenacity loop with this policy's waits and limits; the last failure is re-raised.
        ``sleep``: how to wait between attempts (DependencyHealth.wait_recovery ends a wait early
        when the dependency comes back)."""
        stops: list[stop_base] = []
        if self.max_attempts is not None:
            stops.append(stop_after_attempt(self.max_attempts))
        if self.max_seconds is not None:
            stops.append(stop_after_delay(self.max_seconds))
        return AsyncRetrying(
            sleep=sleep or asyncio.sleep,
            wait=_FullJitter(self),
            retry=retry,
            stop=stop_any(*stops) if stops else stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )


def failed_and(predicate: Callable[[BaseException], bool]) -> Callable[[RetryCallState], bool]:
    """A tenacity ``retry`` condition: the attempt raised, and ``predicate`` holds for the exception."""

    def check(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        return exc is not None and predicate(exc)

    return check


# The connector's retry vocabulary: every retry loop uses one of these (limits from the settings
# where the operator may tune them, via ``with_limits``).
STARTUP = RetryPolicy("startup", first=0.5, cap=15)  # RabbitMQ, SQS or S3 not there yet at start
SQS_QUICK = RetryPolicy("sqs_quick", first=0.05, cap=1, max_attempts=3)  # one call: dropped connection, 5xx
SQS_HOLD = RetryPolicy(
    "sqs_hold", first=0.1, cap=20
)  # a batch held while SQS is away (forward.retry_max_backoff_seconds)
SQS_DELETE = RetryPolicy("sqs_delete", first=0.2, cap=5)  # reply deletes, while the replies stay invisible
POLLER = RetryPolicy("poller", first=1.0, cap=30)  # a reply poller whose receive failed
DEAD_LETTER = RetryPolicy("dead_letter", first=0.2, cap=10)  # a dead-letter publish, while its channel lives
# A reply publish; only failures that are neither the reply's nor an outage's spend its budget
# (sqs.reply_max_attempts), so an outage never dead-letters replies.
REPLY_PUBLISH = RetryPolicy("reply_publish", first=0.2, cap=10)
S3_PUT = RetryPolicy("s3_put", first=0.2, cap=20)  # claim-check store, while the delivery can still be acked
# A reply action whose Lamassu call timed out or got a 5xx / 429 (actions.retry_max_backoff_seconds,
# actions.max_attempts), while the reply is kept invisible in SQS.
REPLY_ACTION = RetryPolicy("reply_action", first=0.5, cap=60)
