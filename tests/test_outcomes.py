"""The failure model's decisions (outcomes.py), the byte budget and the crash guard: no services."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from aiormq.exceptions import ChannelInvalidStateError, ConnectionClosed, DeliveryError
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pamqp.encode import field_table

from lamassu_aws_connector.crashguard import CrashGuard, content_key
from lamassu_aws_connector.health import DependencyHealth, ProgressWatch
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.outbound import ByteBudget
from lamassu_aws_connector.outcomes import (
    DROPPED_HEADERS_NOTE,
    HEADERS_MAX_BYTES,
    SQS_DELETE,
    STARTUP,
    Outcome,
    RetryPolicy,
    amqp_limit_problem,
    classify_amqp_publish_error,
    classify_s3_get_error,
    classify_sqs_entry_failure,
    classify_sqs_error,
    dead_letter_headers,
    exception_chain,
    failed_and,
    is_batch_too_long,
    is_unavailable,
)


def client_error(code: str, status: int = 400, operation: str = "SendMessageBatch") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


# ------------------------------------------------------------------------------------------------
# SQS
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "InvalidMessageContents",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "InvalidParameterValue",
        "InvalidParameterValueException",  # LocalStack's spelling of entry failures
        "MissingParameter",
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    ],
)
def test_sqs_content_codes_are_permanent(code: str) -> None:
    assert classify_sqs_error(client_error(code)) is Outcome.PERMANENT


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", 400),
        ("QueueDoesNotExist", 400),
        ("InvalidIdentityToken", 400),  # IRSA: STS refused the web identity token
        ("IDPCommunicationError", 400),
        ("AccessDenied", 403),
        ("OptInRequired", 403),
        ("IncompleteSignature", 400),
        ("KMS.AccessDeniedException", 400),
        ("KmsDisabled", 400),
        ("RequestThrottled", 400),
        ("InternalError", 500),
        ("AnErrorCodeNobodyHasSeenYet", 400),  # unknown means dependency
        ("AWS.SimpleQueueService.UnsupportedOperation", 400),
    ],
)
def test_everything_else_sqs_answers_is_a_dependency(code: str, status: int) -> None:
    assert classify_sqs_error(client_error(code, status)) is Outcome.DEPENDENCY


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        NoCredentialsError(),
        CredentialRetrievalError(provider="assume-role-with-web-identity", error_msg="InvalidIdentityToken"),
        RuntimeError("a bug somewhere below"),
    ],
)
def test_non_aws_failures_are_dependencies(exc: Exception) -> None:
    assert classify_sqs_error(exc) is Outcome.DEPENDENCY


def test_batch_too_long_in_either_spelling() -> None:
    assert is_batch_too_long(client_error("AWS.SimpleQueueService.BatchRequestTooLong"))
    assert is_batch_too_long(client_error("BatchRequestTooLong"))
    assert not is_batch_too_long(client_error("InvalidMessageContents"))


def test_unavailable_is_network_5xx_and_throttling_only() -> None:
    assert is_unavailable(EndpointConnectionError(endpoint_url="http://x"))
    assert is_unavailable(client_error("InternalError", 500))
    assert is_unavailable(client_error("RequestThrottled", 400))
    # Missing credentials stop the daemon at start with a clear error instead of waiting.
    assert not is_unavailable(NoCredentialsError())
    assert not is_unavailable(client_error("AccessDenied", 403))


@pytest.mark.parametrize(
    ("code", "others_succeeded", "expected"),
    [
        ("InvalidMessageContents", False, Outcome.PERMANENT),
        ("InvalidParameterValueException", True, Outcome.PERMANENT),
        ("KmsThrottled", True, Outcome.DEPENDENCY),
        ("KMS.DisabledException", True, Outcome.DEPENDENCY),
        ("AWS.SimpleQueueService.NonExistentQueue", True, Outcome.DEPENDENCY),
        ("InternalError", True, Outcome.TRANSIENT),  # failed alone: the entry's budget
        ("InternalError", False, Outcome.DEPENDENCY),  # every entry failed: SQS's trouble
        ("Unheard", False, Outcome.DEPENDENCY),
    ],
)
def test_entry_failures(code: str, others_succeeded: bool, expected: Outcome) -> None:
    assert classify_sqs_entry_failure(code, others_succeeded=others_succeeded) is expected


def test_s3_only_a_missing_object_is_the_replys_fault() -> None:
    assert classify_s3_get_error(client_error("NoSuchKey", 404, "GetObject")) is Outcome.PERMANENT
    assert classify_s3_get_error(client_error("NoSuchBucket", 404, "GetObject")) is Outcome.PERMANENT
    assert classify_s3_get_error(client_error("AccessDenied", 403, "GetObject")) is Outcome.DEPENDENCY
    assert classify_s3_get_error(client_error("SlowDown", 503, "GetObject")) is Outcome.DEPENDENCY
    assert classify_s3_get_error(EndpointConnectionError(endpoint_url="http://x")) is Outcome.DEPENDENCY


# ------------------------------------------------------------------------------------------------
# AMQP
# ------------------------------------------------------------------------------------------------


def test_amqp_limits_checked_before_publishing() -> None:
    assert amqp_limit_problem("io.lamassu.x", "id-1", {"a": "b"}) is None
    assert "routing key" in str(amqp_limit_problem("t" * 256, "id", None))
    assert "message id" in str(amqp_limit_problem("t", "i" * 256, None))
    assert amqp_limit_problem("t", "é" * 127, None) is None  # 254 bytes
    assert "message id" in str(amqp_limit_problem("t", "é" * 128, None))  # 256 bytes
    assert "header name" in str(amqp_limit_problem("t", None, {"h" * 300: "v"}))
    assert "headers take" in str(amqp_limit_problem("t", None, {"h": "v" * (HEADERS_MAX_BYTES + 1)}))


def test_publish_errors() -> None:
    assert classify_amqp_publish_error(TypeError("string exceeds maximum length of 255 bytes")) is Outcome.PERMANENT
    assert classify_amqp_publish_error(ValueError("Routing key too long")) is Outcome.PERMANENT
    assert classify_amqp_publish_error(ConnectionClosed(320, "shutdown")) is Outcome.DEPENDENCY
    assert classify_amqp_publish_error(ChannelInvalidStateError("closed")) is Outcome.DEPENDENCY
    assert classify_amqp_publish_error(TimeoutError()) is Outcome.TRANSIENT
    assert classify_amqp_publish_error(DeliveryError(None, None)) is Outcome.TRANSIENT


# ------------------------------------------------------------------------------------------------
# Dead-letter headers
# ------------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_dead_letter_headers_name_the_reason_and_keep_the_original_headers() -> None:
    headers = dead_letter_headers(
        "invalid_json",
        "body is not valid JSON",
        {"x-original-exchange": "lamassu-events", "x-original-routing-key": "ca.create"},
        {"traceparent": "00-abc", "count": 3, "raw": b"bytes", "x-error-code": "forged", "x-sqs-queue": "evil"},
        now=NOW,
    )
    assert headers["x-error-code"] == "invalid_json"
    assert headers["x-error-message"] == "body is not valid JSON"
    assert headers["x-original-exchange"] == "lamassu-events"
    assert headers["x-dead-lettered-at"] == "2026-12-01T00:00:00.000+00:00"
    assert headers["traceparent"] == "00-abc" and headers["count"] == "3" and headers["raw"] == "bytes"
    assert "x-sqs-queue" not in headers  # a publisher's value in the connector's namespace is not kept
    assert all(isinstance(value, str) for value in headers.values())


def test_dead_letter_headers_write_values_as_a_reader_would() -> None:
    # One rendering for every header copy the connector writes (DLQ copies, replays, relayed replies).
    original = {"flag": True, "none": None, "binary": b"\xff\x00", "nested": {"a": [1, False]}}
    headers = dead_letter_headers("c", "m", {}, original, now=NOW)
    assert headers["flag"] == "true" and headers["none"] == ""
    assert headers["binary"] == "/wA="  # not UTF-8: base64, so the bytes survive the copy
    assert headers["nested"] == '{"a":[1,false]}'


def test_dead_letter_headers_always_fit_in_a_frame() -> None:
    huge_attributes = {f"x-sqs-attribute-a{n}": "v" * 100_000 for n in range(10)}
    many = {f"h{n}": "w" * 3000 for n in range(100)}
    headers = dead_letter_headers(
        "invalid_json",
        "cannot read s3://bucket/" + "k" * 200_000,
        {"x-sqs-message-id": "m-1", "x-sqs-queue": "lamassu-response"},
        many,
        droppable=huge_attributes,
        now=NOW,
    )
    encoded = field_table(headers)
    assert len(encoded) < HEADERS_MAX_BYTES + 1024
    assert headers["x-error-code"] == "invalid_json" and headers["x-sqs-message-id"] == "m-1"
    assert len(headers["x-error-message"].encode()) <= 1024 and "cut]" in headers["x-error-message"]
    dropped = headers[DROPPED_HEADERS_NOTE].split(",")
    assert dropped and all(name not in headers for name in dropped)
    # Whatever was kept is whole or visibly cut, never silently changed.
    assert headers["x-sqs-attribute-a0"].endswith("cut]") if "x-sqs-attribute-a0" in headers else True


def test_dead_letter_headers_drop_names_amqp_cannot_carry() -> None:
    headers = dead_letter_headers("c", "m", {}, {"n" * 300: "v", "ok": "v"}, now=NOW)
    assert "ok" in headers and not any(len(name) > 255 for name in headers)
    # A reply's attributes that cannot be headers (a Binary one, a name too long) are named, not lost silently.
    droppable = {"x-sqs-attribute-blob": None, "x-sqs-attribute-" + "a" * 250: "v", "x-sqs-attribute-k": "v"}
    headers = dead_letter_headers("c", "m", {}, droppable=droppable, now=NOW)
    assert headers["x-sqs-attribute-k"] == "v" and "x-sqs-attribute-blob" not in headers
    noted = headers[DROPPED_HEADERS_NOTE].split(",")
    assert "x-sqs-attribute-blob" in noted and any(name.startswith("x-sqs-attribute-aaaa") for name in noted)


# ------------------------------------------------------------------------------------------------
# Retry policies
# ------------------------------------------------------------------------------------------------


def test_policy_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy("p", first=0.5, cap=4)
    for attempt in range(1, 40):
        assert 0 <= policy.delay(attempt) <= min(4, 0.5 * 2 ** (attempt - 1))
    assert STARTUP.with_limits(cap=1).cap == 1 and STARTUP.cap == 15


async def test_policy_loop_stops_on_its_limits() -> None:
    calls = 0
    policy = RetryPolicy("quick", first=0.001, cap=0.001, max_attempts=3)
    with pytest.raises(OSError):
        async for attempt in policy.retrying(failed_and(lambda exc: isinstance(exc, OSError))):
            with attempt:
                calls += 1
                raise OSError("still down")
    assert calls == 3
    calls = 0
    with pytest.raises(ValueError):  # not retried: the predicate says no
        async for attempt in policy.retrying(failed_and(lambda exc: isinstance(exc, OSError))):
            with attempt:
                calls += 1
                raise ValueError("bad")
    assert calls == 1
    assert SQS_DELETE.with_limits(max_seconds=45).max_seconds == 45


# ------------------------------------------------------------------------------------------------
# Byte budget
# ------------------------------------------------------------------------------------------------


async def test_byte_budget_holds_what_does_not_fit_and_lets_a_giant_in_alone() -> None:
    budget = ByteBudget(100)
    await budget.acquire(60)
    await budget.acquire(40)
    waiting = asyncio.create_task(budget.acquire(10))
    giant = asyncio.create_task(budget.acquire(500))
    await asyncio.sleep(0)
    assert not waiting.done() and budget.used == 100
    budget.release(60)
    await asyncio.sleep(0)
    assert waiting.done() and budget.used == 50 and not giant.done()
    budget.release(40)
    budget.release(10)
    await asyncio.sleep(0)
    assert giant.done() and budget.used == 500  # alone, rather than never
    cancelled = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    budget.release(500)
    assert budget.used == 0


# ------------------------------------------------------------------------------------------------
# Crash guard
# ------------------------------------------------------------------------------------------------


async def test_crash_guard_counts_a_strike_only_for_what_was_in_progress_at_death(tmp_path: Path) -> None:
    metrics = Metrics()
    poison, innocent = content_key(b"poison", "t"), content_key(b"fine", "t")
    first = CrashGuard(str(tmp_path), "lamassu_events", 2, metrics)
    first.open()
    assert first.enabled
    async with first.handling(innocent):
        pass
    handling = first.handling(poison)
    await handling.__aenter__()  # ... and the process dies here: no __aexit__
    first.close()  # the kernel releases the lock of a dead process

    second = CrashGuard(str(tmp_path), "lamassu_events", 2, metrics)
    second.open()
    assert second.path == first.path  # the dead process's slot, taken over
    assert second.strikes(poison) == 1 and second.strikes(innocent) == 0
    async with second.handling(poison):
        pass  # handled to the end this time: the strike is forgiven
    second.close()
    third = CrashGuard(str(tmp_path), "lamassu_events", 2, metrics)
    third.open()
    assert third.strikes(poison) == 0
    third.close()


def test_crash_guard_slots_are_per_process_and_a_torn_file_is_survived(tmp_path: Path) -> None:
    metrics = Metrics()
    one = CrashGuard(str(tmp_path), "q", 3, metrics)
    one.open()
    two = CrashGuard(str(tmp_path), "q", 3, metrics)
    two.open()
    assert one.path != two.path  # replicas on one host never share a file
    one.close()
    two.close()
    assert one.path is not None
    one.path.write_bytes(b'{"strikes": {"ab')  # killed mid-write
    again = CrashGuard(str(tmp_path), "q", 3, metrics)
    again.open()
    assert again.enabled and again.strikes("ab") == 0
    again.close()


def test_crash_guard_off_when_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    guard = CrashGuard(str(blocker / "sub"), "q", 3, Metrics())
    guard.open()
    assert not guard.enabled


async def test_progress_watch_reports_a_stall_only_while_holding_work() -> None:
    watch = ProgressWatch(0.05)
    assert not watch.stalled(holding_work=True)
    await asyncio.sleep(0.06)
    assert watch.stalled(holding_work=True)
    assert not watch.stalled(holding_work=False)  # nothing in hand: idle, not stuck (and the clock restarts)
    assert not watch.stalled(holding_work=True)
    await asyncio.sleep(0.06)
    watch.progressed()
    assert not watch.stalled(holding_work=True)


def test_dependency_health_logs_and_counts_each_change_once() -> None:
    metrics = Metrics()
    health = DependencyHealth(metrics, ("sqs_command_queue",))
    for _ in range(5):
        health.down("sqs_command_queue", "AWS.SimpleQueueService.NonExistentQueue")
    assert health.checks() == {"sqs_command_queue": False}
    sample = metrics.registry.get_sample_value
    assert sample("lamassu_connector_dependency_up", {"dependency": "sqs_command_queue"}) == 0
    labels = {"dependency": "sqs_command_queue", "error": "AWS.SimpleQueueService.NonExistentQueue"}
    assert sample("lamassu_connector_dependency_failures_total", labels) == 1
    health.up("sqs_command_queue")
    assert health.is_up("sqs_command_queue")
    assert sample("lamassu_connector_dependency_up", {"dependency": "sqs_command_queue"}) == 1


def test_exception_chain_finds_what_is_wrapped_in_arguments_causes_and_contexts() -> None:
    """aiormq passes the TLS error as an argument of its own exception; aiohttp chains it as a cause."""
    tls = ssl.SSLCertVerificationError("certificate verify failed")
    in_args = ConnectionError("cannot connect", tls)
    caused = RuntimeError("wrapped")
    caused.__cause__ = in_args
    context = ValueError("while handling")
    context.__context__ = caused
    context.__cause__ = context  # a cycle ends the walk
    chain = list(exception_chain(context))
    assert chain[0] is context and {id(e) for e in chain} == {id(context), id(caused), id(in_args), id(tls)}
    assert len(chain) == 4


async def test_a_dependency_coming_back_cuts_every_backoff_short() -> None:
    health = DependencyHealth(Metrics(), ("sqs_command_queue",))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await health.wait_recovery(0.05)  # nothing comes back: the whole backoff
    assert loop.time() - started >= 0.05
    health.down("sqs_command_queue", "EndpointConnectionError")
    waiting = [asyncio.create_task(health.wait_recovery(600)) for _ in range(3)]
    await asyncio.sleep(0)
    health.up("sqs_command_queue")  # one call got through: everyone backing off tries again now
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    stop = asyncio.Event()
    stopping = asyncio.create_task(health.wait_recovery(600, stop=stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(stopping, 5)
    health.up("sqs_command_queue")  # already up: no change, nobody woken
    started = loop.time()
    await health.wait_recovery(0.05)
    assert loop.time() - started >= 0.05
