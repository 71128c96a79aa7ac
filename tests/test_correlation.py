"""Command -> reply correlation, data validation and trace context, end to end on real RabbitMQ and SQS.

A fake "Lambda" task in the test reads lamassu-command and answers into lamassu-response the way
the v1 Lambdas do (reply id = request id) or with the correlation extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from lamassu_aws_connector.commands import ConfigCache
from lamassu_aws_connector.config import CorrelationConfig, Settings
from lamassu_aws_connector.correlation import (
    FLEET_GRACE_SECONDS,
    MATCHED,
    ORPHAN,
    PARKED,
    UNSOLICITED,
    CorrelationTable,
)
from lamassu_aws_connector.events import CloudEvent, parse_amqp, parse_structured
from lamassu_aws_connector.fleet import Fleet
from lamassu_aws_connector.inbound import _trace_context as inbound_trace
from lamassu_aws_connector.metrics import Metrics
from lamassu_aws_connector.outbound import _trace_context as outbound_trace
from lamassu_aws_connector.service import Service

from . import samples
from .conftest import World, running, wait_for
from .test_inbound import bind_observer
from .test_outbound import attributes, metric

W3C_TRACESTATE = "lamassu=00f067aa0ba902b7,congo=t61rcWkgMzE"


def event(event_type: str, event_id: str | None = None, data: Any = None, **extensions: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "lamassu/aws-connector/test",
        "type": event_type,
        "datacontenttype": "application/json",
        "data": {} if data is None else data,
        **extensions,
    }


def ce(raw: dict[str, Any]) -> CloudEvent:
    return CloudEvent.model_validate(raw)


# --- the table on its own (a fake clock) ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(**config: Any) -> tuple[CorrelationTable, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    settings = CorrelationConfig(**{"timeout_seconds": 10, **config})
    return CorrelationTable(settings, metrics, clock), clock, metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"lamassu_connector_{name}", labels) or 0.0


def test_replies_match_by_correlationid_causationid_or_the_v1_echoed_id() -> None:
    correlations, clock, metrics = table(command_types=["*"])
    correlations.command_sent(ce(event("io.lamassu.iotcore.config.request", "req-1")))
    correlations.command_sent(ce(event("device.create", "req-2", correlationid="flow-2")))
    correlations.command_sent(ce(event("device.create", "req-3")))
    clock.now += 2.5
    assert correlations.reply_received(ce(event("io.lamassu.iotcore.config.response", "req-1")), {}) == MATCHED
    assert correlations.reply_received(ce(event("x.reply", correlationid="flow-2")), {}) == MATCHED
    assert correlations.reply_received(ce(event("x.reply", causationid="req-3")), {}) == MATCHED
    assert len(correlations) == 0
    assert value(metrics, "replies_correlated_total", outcome=MATCHED) == 3
    latency = value(metrics, "command_reply_latency_seconds_sum", event_type="io.lamassu.iotcore.config.request")
    assert latency == pytest.approx(2.5)


def test_a_command_with_a_correlationid_is_also_found_by_its_own_id() -> None:
    correlations, _, _ = table(command_types=["*"])
    correlations.command_sent(ce(event("device.create", "req-9", correlationid="flow-9")))
    assert correlations.reply_received(ce(event("x.reply", causationid="req-9")), {}) == MATCHED


def test_a_correlation_id_is_outstanding_until_its_reply_or_its_expiry() -> None:
    correlations, clock, _ = table(command_types=["*"])
    sent_from_the_bus = ce(event("device.create", "bus-1", correlationid="flow-1"))
    correlations.command_sent(sent_from_the_bus)
    correlations.on_command_announced("flow-7", "other-7", "device.create")  # another replica's command
    for reused in ("flow-1", "bus-1", "flow-7"):
        assert correlations.outstanding(ce(event("device.create", "api-1", correlationid=reused)))
    assert not correlations.outstanding(ce(event("device.create", "api-2", correlationid="flow-2")))
    assert correlations.reply_received(ce(event("x.reply", correlationid="flow-1")), {}) == MATCHED
    assert not correlations.outstanding(ce(event("device.create", "api-1", correlationid="flow-1")))
    clock.now += 11  # past timeout_seconds: expired, the id is free again
    assert not correlations.outstanding(ce(event("device.create", "api-1", correlationid="flow-7")))


def test_command_counters_exist_at_zero_for_every_tracked_label() -> None:
    _, _, metrics = table()
    for command in ("io.lamassu.iotcore.config.request", "io.lamassu.iotcore.thing.config.request"):
        for name in ("commands_tracked_total", "commands_expired_total", "commands_evicted_total"):
            assert metrics.registry.get_sample_value(f"lamassu_connector_{name}", {"event_type": command}) == 0.0
    _, _, custom = table(command_types=["custom.ping", "custom.*"])
    for label in ("custom.ping", "other"):
        assert (
            custom.registry.get_sample_value("lamassu_connector_commands_expired_total", {"event_type": label}) == 0.0
        )


def test_orphans_and_unsolicited_notifications_are_told_apart() -> None:
    correlations, _, metrics = table()
    assert correlations.reply_received(ce(event("x.reply", correlationid="nobody")), {}) == ORPHAN
    # A known answer type (v1: id echoes a request) whose request is not outstanding.
    assert correlations.reply_received(ce(event("io.lamassu.iotcore.config.response")), {}) == ORPHAN
    # CloudTrail notifications answer nothing.
    assert correlations.reply_received(ce(event("io.lamassu.iotcore.cert.status.update")), {}) == UNSOLICITED
    assert value(metrics, "replies_correlated_total", outcome=ORPHAN) == 2
    assert value(metrics, "replies_correlated_total", outcome=UNSOLICITED) == 1


def test_by_default_only_commands_with_a_known_reply_are_tracked() -> None:
    correlations, _, _ = table()
    correlations.command_sent(ce(event("certificate.status.update")))  # a notification: no reply expected
    correlations.command_sent(ce(event("io.lamassu.iotcore.thing.config.request", data={"device_id": "d"})))
    assert len(correlations) == 1
    disabled, _, _ = table(enabled=False, command_types=["*"])
    disabled.command_sent(ce(event("device.create")))
    assert len(disabled) == 0


def test_the_table_is_bounded_and_expires_oldest_first() -> None:
    correlations, clock, metrics = table(command_types=["*"], max_outstanding=3)
    for number in range(5):
        correlations.command_sent(ce(event("device.create", f"c{number}")))
        clock.now += 1
    assert len(correlations) == 3
    assert value(metrics, "commands_evicted_total", event_type="device.create") == 2
    # A redelivered copy neither duplicates nor refreshes its entry.
    correlations.command_sent(ce(event("device.create", "c4")))
    assert len(correlations) == 3
    clock.now += 7.5  # c2 was sent 10 s ago, c3 9 s ago
    assert correlations.expire() == 1
    assert value(metrics, "commands_expired_total", event_type="device.create") == 1
    assert correlations.reply_received(ce(event("x.reply", "c2")), {}) == UNSOLICITED  # gone, and no claim
    assert correlations.reply_received(ce(event("x.reply", "c3")), {}) == MATCHED
    assert value(metrics, "commands_outstanding") == 1


# --- on real services --------------------------------------------------------------------------


async def fake_lambda(world: World, answer: dict[str, Any], seen: list[dict[str, Any]]) -> None:
    """Read lamassu-command; for each command whose type is in ``answer``, send what it returns."""
    command_url = await world.sqs_url(world.command_queue)
    response_url = await world.sqs_url(world.response_queue)
    while True:
        response = await world.sqs.receive_message(
            QueueUrl=command_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            seen.append(message)
            command = orjson.loads(message["Body"])
            make_reply = answer.get(command["type"])
            if make_reply is not None:
                reply, reply_attributes = make_reply(command, attributes(message))
                await world.sqs.send_message(
                    QueueUrl=response_url,
                    MessageBody=orjson.dumps(reply).decode(),
                    MessageAttributes={
                        name: {"DataType": "String", "StringValue": text} for name, text in reply_attributes.items()
                    },
                )
            await world.sqs.delete_message(QueueUrl=command_url, ReceiptHandle=message["ReceiptHandle"])


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def v1_config_reply(command: dict[str, Any], attrs: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    # The v1 Lambda echoes the request id and carries the trace context on as message attributes.
    reply = event("io.lamassu.iotcore.config.response", command["id"], {"account_id": "1", "iot_core_endpoint": "e"})
    reply["source"] = "aws/lambda"
    return reply, {name: attrs[name] for name in ("traceparent", "tracestate") if name in attrs}


def correlated_thing_reply(command: dict[str, Any], attrs: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data = {"device_id": command["data"]["device_id"], "status": 404}
    return event("io.lamassu.iotcore.thing.config.response", data=data, correlationid=attrs["ce-correlationid"]), {}


@pytest.mark.integration
async def test_commands_and_replies_are_correlated_through_sqs(world: World) -> None:
    observer = await bind_observer(world, "#")
    config_request = event("io.lamassu.iotcore.config.request")
    thing_request = event("io.lamassu.iotcore.thing.config.request", data={"device_id": "d1"}, correlationid="op-7")
    code_request = event(
        "io.lamassu.iotcore.ca.registration.request-code",
        data={"ca_name": "CA1", "serial_number": "0a-1b", "ca_cert": _ca_cert()},
    )
    orphan = event("io.lamassu.iotcore.config.response", data={"account_id": "1", "iot_core_endpoint": "e"})
    notification = event("io.lamassu.iotcore.cert.status.update", data={"status": "REVOKED", "certificate_id": "ab"})
    seen: list[dict[str, Any]] = []
    answers = {config_request["type"]: v1_config_reply, thing_request["type"]: correlated_thing_reply}

    settings = world.settings(correlation={"timeout_seconds": 1.5})
    async with running(settings) as service:
        lambda_task = asyncio.create_task(fake_lambda(world, answers, seen))
        try:
            await world.publish(
                samples.body(config_request),
                exchange="",
                content_type="text/json",
                headers={"traceparent": samples.W3C_TRACEPARENT, "tracestate": W3C_TRACESTATE},
            )
            await world.publish(samples.body(thing_request), exchange="", content_type="text/json")
            await world.publish(samples.body(code_request), exchange="", content_type="text/json")
            await wait_for(lambda: len(seen) == 3, what="the fake Lambda saw 3 commands")
            url = await world.sqs_url(world.response_queue)
            for unanswered in (orphan, notification):
                await world.sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps(unanswered).decode())

            def correlated(outcome: str) -> float:
                return metric(service, "replies_correlated", outcome=outcome)

            await wait_for(lambda: correlated(MATCHED) == 2, what="2 matched replies")
            await wait_for(lambda: correlated(ORPHAN) == 1 and correlated(UNSOLICITED) == 1, what="orphan, unsolicited")
            code_type = code_request["type"]
            await wait_for(
                lambda: metric(service, "commands_expired", event_type=code_type) == 1, what="request-code expired"
            )
            replies = await world.take_amqp(observer.name, 4)
        finally:
            await cancelled(lambda_task)
        registry = service.metrics.registry
        assert (
            registry.get_sample_value(
                "lamassu_connector_command_reply_latency_seconds_count", {"event_type": config_request["type"]}
            )
            == 1
        )
        assert metric(service, "commands_tracked", event_type=code_type) == 1
        assert registry.get_sample_value("lamassu_connector_commands_outstanding") == 0

    by_type = {orjson.loads(message["Body"])["type"]: attributes(message) for message in seen}
    # Outbound: the correlation id travels as an attribute; the body stays byte for byte.
    assert by_type[config_request["type"]]["ce-correlationid"] == config_request["id"]
    assert by_type[thing_request["type"]]["ce-correlationid"] == "op-7"
    assert by_type[config_request["type"]]["traceparent"] == samples.W3C_TRACEPARENT
    assert by_type[config_request["type"]]["tracestate"] == W3C_TRACESTATE
    assert "traceparent" not in by_type[thing_request["type"]]
    # Back: the trace context of the command returns on its reply's AMQP headers.
    config_reply = next(message for message in replies if message.message_id == config_request["id"])
    assert config_reply.headers["traceparent"] == samples.W3C_TRACEPARENT
    assert config_reply.headers["tracestate"] == W3C_TRACESTATE


@pytest.mark.integration
async def test_enforce_dead_letters_invalid_data_and_warn_forwards_it(world: World) -> None:
    invalid = event("io.lamassu.cert.update", "bad-1", {"name": "CA1", "serial_number": "4a-1c", "status": "gone"})
    valid = event("io.lamassu.cert.update", "good-1", {"name": "CA1", "serial_number": "4a-1c", "status": "REVOKED"})
    unknown = event("io.example.unknown", "unknown-1", {"status": "gone"})
    async with running(world.settings(validation={"data": "enforce"})) as service:
        for item in (invalid, valid, unknown):
            await world.publish(samples.body(item), exchange="", content_type="text/json")
        forwarded = await world.take_sqs(world.command_queue, 2)
        [parked] = await world.take_amqp(world.dlq, 1)
        assert metric(service, "events_dead_lettered", code="invalid_data") == 1
        assert metric(service, "events_invalid_data", event_type=invalid["type"], mode="enforce") == 1
    assert {attributes(message)["ce-id"] for message in forwarded} == {"good-1", "unknown-1"}
    assert parked.body == samples.body(invalid)
    headers = parked.headers or {}
    assert headers["x-error-code"] == "invalid_data"
    assert "data.status" in str(headers["x-error-message"])

    async with running(world.settings(validation={"data": "warn"})) as service:
        await world.publish(samples.body(invalid), exchange="", content_type="text/json")
        [message] = await world.take_sqs(world.command_queue, 1)
        assert metric(service, "events_invalid_data", event_type=invalid["type"], mode="warn") == 1
        assert metric(service, "events_forwarded") == 1
    assert message["Body"] == samples.body(invalid).decode()
    assert await world.queue_depth(world.dlq) == 0


def _ca_cert() -> str:
    from .test_catalogue import CERT  # noqa: PLC0415 - one generated certificate for the whole run

    return CERT


@pytest.mark.integration
async def test_commands_api_round_trip_invalid_and_timeout(world: World) -> None:
    await bind_observer(world, "#")
    seen: list[dict[str, Any]] = []
    token = "t0ken-for-the-command-api"
    settings = world.settings(http={"commands": True, "commands_timeout_seconds": 1.0, "auth_token": token})
    async with running(settings) as service:
        lambda_task = asyncio.create_task(
            fake_lambda(world, {"io.lamassu.iotcore.config.request": v1_config_reply}, seen)
        )
        base = f"http://127.0.0.1:{service.http.port}/v1/commands"
        try:
            async with aiohttp.ClientSession() as anonymous:
                for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": token}):
                    command = event("io.lamassu.iotcore.config.request")
                    async with anonymous.post(base, data=samples.body(command), headers=headers) as response:
                        assert response.status == 401
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
                async with anonymous.get(f"http://127.0.0.1:{service.http.port}/readyz") as response:
                    assert response.status == 200  # the probes and /metrics stay open
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
                untracked = event("io.lamassu.whatever.i.like")
                async with session.post(base, data=samples.body(untracked)) as response:
                    assert response.status == 400
                    assert (await response.json())["error"] == "untracked_type"
                command = event("io.lamassu.iotcore.config.request")
                async with session.post(
                    base, data=samples.body(command), headers={"traceparent": samples.W3C_TRACEPARENT}
                ) as response:
                    assert response.status == 200, await response.text()
                    assert response.content_type == "application/cloudevents+json"
                    reply = orjson.loads(await response.read())
                assert reply["id"] == command["id"]
                assert reply["type"] == "io.lamassu.iotcore.config.response"
                assert reply["data"] == {"account_id": "1", "iot_core_endpoint": "e"}
                assert attributes(seen[0])["traceparent"] == samples.W3C_TRACEPARENT

                async with session.post(base, data=b'{"specversion": "1.0"}') as response:
                    assert response.status == 400
                    assert (await response.json())["error"] == "invalid_attribute"
                bad_data = event("io.lamassu.iotcore.thing.config.request", data={})
                async with session.post(base, data=samples.body(bad_data)) as response:
                    assert response.status == 400
                    body = await response.json()
                    assert body["error"] == "invalid_data" and "data.device_id is missing" in body["message"]

                unanswered = event("io.lamassu.iotcore.thing.config.request", data={"device_id": "d"})
                first = asyncio.create_task(session.post(base, data=samples.body(unanswered)))
                await wait_for(lambda: service.correlation.awaited(parse_structured(samples.body(unanswered)).event))
                async with session.post(base, data=samples.body(unanswered)) as response:
                    assert response.status == 409  # the same correlation id is already awaited
                    assert (await response.json())["correlation_id"] == unanswered["id"]
                async with await first as response:
                    assert response.status == 504
                    assert (await response.json())["correlation_id"] == unanswered["id"]
                # Its caller gave up, but the command still awaits its reply: a second command under
                # that id could be answered with the first one's late reply.
                async with session.post(base, data=samples.body(unanswered)) as response:
                    assert response.status == 409
                lower_case_scheme = {"Authorization": f"bearer {token}"}  # RFC 7235: the scheme is case-insensitive
                async with session.post(base, data=b"{}", headers=lower_case_scheme) as response:
                    assert response.status == 400
        finally:
            await cancelled(lambda_task)
        assert metric(service, "api_commands", outcome="replied") == 1
        assert metric(service, "api_commands", outcome="invalid") == 4
        assert metric(service, "api_commands", outcome="timeout") == 1
        assert metric(service, "api_commands", outcome="unauthorized") == 3
        assert metric(service, "api_commands", outcome="conflict") == 2
        assert metric(service, "replies_correlated", outcome="matched") == 1
    assert len(seen) == 2  # the invalid ones never reached SQS


def test_the_config_cache_keeps_the_latest_configuration_until_a_ca_changes_or_it_ages() -> None:
    clock = Clock()
    cache = ConfigCache(300, clock=clock)
    assert cache.get() is None
    cache.observe(ce(event("io.lamassu.iotcore.config.response", data={"account_id": "1", "iot_core_endpoint": "e"})))
    clock.now += 10
    assert cache.get() == ({"account_id": "1", "iot_core_endpoint": "e"}, 10)
    cache.observe(ce(event("io.lamassu.iotcore.thing.config.response", data={"device_id": "d"})))
    assert cache.get() is not None  # a thing's configuration says nothing of the CAs
    cache.observe(ce(event("io.lamassu.iotcore.ca.status.update", data={"ca_name": "c", "status": "INACTIVE"})))
    assert cache.get() is None
    cache.observe(ce(event("io.lamassu.iotcore.config.response", data={"account_id": "2", "iot_core_endpoint": "e"})))
    clock.now += 300
    assert cache.get() is None  # too old


async def test_a_ca_reply_relayed_by_one_replica_drops_every_replicas_kept_configuration() -> None:
    settings = Settings(http={"commands": True, "host": "127.0.0.1"}, actions={"config_cache": True})
    caches = [ConfigCache(300) for _ in range(2)]
    fleets = [
        Fleet(settings, None, CorrelationTable(settings.correlation, Metrics()), Metrics(), on_config_drop=c.drop)  # type: ignore[arg-type]
        for c in caches
    ]
    config = ce(event("io.lamassu.iotcore.config.response", data={"account_id": "1", "iot_core_endpoint": "e"}))
    for cache in caches:
        cache.observe(config)
    announced: list[tuple[str, dict[str, Any]]] = []
    fleets[0].announce = lambda kind, payload: announced.append((kind, payload))  # type: ignore[method-assign]
    service = Service(settings)
    service.config_cache, service.fleet = caches[0], fleets[0]
    service._observe_relayed(ce(event("io.lamassu.iotcore.config.response", data=config.data)))
    assert announced == []  # a configuration is no news for the others
    service._observe_relayed(
        ce(event("io.lamassu.iotcore.ca.status.update", data={"ca_name": "c", "status": "INACTIVE"}))
    )
    assert announced == [("config_drop", {})] and caches[0].get() is None

    class Announcement:
        type, body = "config_drop", b"{}"

        def __init__(self, origin: str) -> None:
            self.headers = {"replica": origin}

    await fleets[1]._on_announcement(Announcement(fleets[1].replica))  # type: ignore[arg-type]
    assert caches[1].get() is not None  # its own announcement comes back to it: nothing to do
    await fleets[1]._on_announcement(Announcement(fleets[0].replica))  # type: ignore[arg-type]
    assert caches[1].get() is None


@pytest.mark.integration
async def test_get_config_asks_aws_once_and_serves_the_kept_configuration(world: World) -> None:
    """The Go connector's GET /v1/config: the first caller's request goes to SQS, later ones are served
    from what was kept; a reply about a CA drops it, and the next caller asks again."""
    seen: list[dict[str, Any]] = []
    token = "t0ken-for-the-config-cache"
    settings = world.settings(
        http={"commands": True, "commands_timeout_seconds": 10.0, "auth_token": token},
        actions={"config_cache": True},
    )

    def config_reply(command: dict[str, Any], attrs: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        data = {"account_id": str(len(seen)), "iot_core_endpoint": "abc-ats.iot.eu-west-1.amazonaws.com"}
        reply = event("io.lamassu.iotcore.config.response", data=data, correlationid=attrs["ce-correlationid"])
        return reply, {}

    async with running(settings) as service:
        lambda_task = asyncio.create_task(fake_lambda(world, {"io.lamassu.iotcore.config.request": config_reply}, seen))
        url = f"http://127.0.0.1:{service.http.port}/v1/config"
        try:
            async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:
                assert response.status == 401
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

                async def get() -> tuple[int, Any, str | None]:
                    async with session.get(url) as response:
                        return response.status, await response.json(), response.headers.get("Age")

                first = await asyncio.gather(get(), get(), get())  # three callers, one request to AWS
                assert [status for status, _, _ in first] == [200, 200, 200]
                assert all(body == {"account_id": "1", "iot_core_endpoint": "abc-ats.iot.eu-west-1.amazonaws.com"}
                           for _, body, _ in first)  # fmt: skip
                assert len(seen) == 1 and orjson.loads(seen[0]["Body"])["type"] == "io.lamassu.iotcore.config.request"
                status, body, age = await get()
                assert status == 200 and body["account_id"] == "1" and age is not None and len(seen) == 1

                # A CA's status changed in AWS IoT: the kept configuration is dropped; the next caller asks again.
                notice = event("io.lamassu.iotcore.ca.status.update", data={"ca_name": "c", "status": "INACTIVE"})
                response_url = await world.sqs_url(world.response_queue)
                await world.sqs.send_message(QueueUrl=response_url, MessageBody=orjson.dumps(notice).decode())
                await wait_for(lambda: service.config_cache is not None and service.config_cache.get() is None)
                status, body, _ = await get()
                assert status == 200 and body["account_id"] == "2" and len(seen) == 2
        finally:
            await cancelled(lambda_task)
        assert metric(service, "api_commands", outcome="cached") == 3
        assert metric(service, "api_commands", outcome="replied") == 2


@pytest.mark.integration
async def test_get_config_callers_share_one_requests_failure_too(world: World) -> None:
    """Nobody answers: the callers waiting together get the one request's 504, not one request each."""
    token = "t0ken-for-the-config-cache"
    settings = world.settings(
        http={"commands": True, "commands_timeout_seconds": 1.0, "auth_token": token}, actions={"config_cache": True}
    )
    async with (
        running(settings) as service,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
    ):
        url = f"http://127.0.0.1:{service.http.port}/v1/config"

        async def get() -> int:
            async with session.get(url) as response:
                return response.status

        assert await asyncio.gather(get(), get(), get()) == [504, 504, 504]
        command_url = await world.sqs_url(world.command_queue)
        received = await world.sqs.receive_message(QueueUrl=command_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        assert len(received.get("Messages", [])) == 1  # one config.request for the three callers
        assert metric(service, "api_commands", outcome="timeout") == 3


@pytest.mark.integration
async def test_commands_api_is_off_by_default(world: World) -> None:
    async with running(world.settings()) as service, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{service.http.port}/v1/commands"
        async with session.post(url, data=samples.body(event("io.lamassu.iotcore.config.request"))) as response:
            assert response.status in (404, 405)


def test_correlationid_enters_a_body_only_where_it_is_re_serialized_anyway() -> None:
    structured = samples.body(event("device.create", "kept-1"))
    assert parse_amqp(structured, "text/json", None, add_correlation_id=True).body == structured
    repaired = parse_amqp(samples.body({**event("device.create"), "id": ""}), None, None, add_correlation_id=True)
    assert orjson.loads(repaired.body)["correlationid"] == repaired.id
    binary = parse_amqp(b"{}", "application/json", samples.binary_headers("ce-"), add_correlation_id=True)
    assert orjson.loads(binary.body)["correlationid"] == "5d2c9e7a11f04b0c"
    own = {**samples.binary_headers("ce-"), "ce-correlationid": "flow-1"}
    assert orjson.loads(parse_amqp(b"{}", "application/json", own, add_correlation_id=True).body)["correlationid"] == (
        "flow-1"
    )
    # Replies are never given one.
    assert b"correlationid" not in parse_structured(samples.body({**event("x.reply"), "id": ""})).body


def test_only_w3c_trace_context_is_propagated_either_way() -> None:
    with_extension = parse_structured(
        samples.body(event("device.create", traceparent=samples.W3C_TRACEPARENT, tracestate=W3C_TRACESTATE))
    )
    assert outbound_trace(with_extension, None) == (samples.W3C_TRACEPARENT, W3C_TRACESTATE)
    v2_style = parse_structured(samples.body(event("device.create", "4bf92f35:00f067aa", traceparent="4bf92f35")))
    assert outbound_trace(v2_style, {"traceparent": "4bf92f35:00f067aa"}) is None
    assert outbound_trace(v2_style, {"traceparent": samples.W3C_TRACEPARENT.encode()}) == (
        samples.W3C_TRACEPARENT,
        None,
    )
    reply = parse_structured(samples.body(event("x.reply")))

    def sqs_message(**attrs: str) -> dict[str, Any]:
        return {"MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()}}

    assert inbound_trace(reply, sqs_message(traceparent="not-w3c", tracestate="a=b")) is None
    assert inbound_trace(reply, sqs_message(traceparent=samples.W3C_TRACEPARENT, tracestate="a=b")) == (
        samples.W3C_TRACEPARENT,
        "a=b",
    )


@pytest.mark.integration
async def test_a_broken_correlation_never_holds_up_delivery(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("correlation bug")

    monkeypatch.setattr(CorrelationTable, "command_sent", broken)
    monkeypatch.setattr(CorrelationTable, "reply_received", broken)
    observer = await bind_observer(world, "#")
    command = event("io.lamassu.iotcore.config.request")
    async with running(world.settings()) as service:
        await world.publish(samples.body(command), exchange="", content_type="text/json")
        [sent] = await world.take_sqs(world.command_queue, 1)
        await wait_for(lambda: metric(service, "events_forwarded") == 1, what="the command acked")
        reply, _ = v1_config_reply(command, {})
        url = await world.sqs_url(world.response_queue)
        await world.sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps(reply).decode())
        [relayed] = await world.take_amqp(observer.name, 1)
        await wait_for(lambda: metric(service, "replies_relayed") == 1, what="the reply relayed")
        await wait_for(_response_queue_empty(world), what="the reply deleted from SQS")
    assert attributes(sent)["ce-id"] == command["id"]
    assert relayed.message_id == command["id"]
    assert await world.queue_depth(world.dlq) == 0
    assert await world.queue_depth(world.reply_dlq) == 0


def _response_queue_empty(world: World) -> Any:
    async def empty() -> bool:
        return await world.sqs_count(world.response_queue) == 0

    return empty


def fan_out(tables: list[CorrelationTable], origin: int, kind: str, payload: dict[str, Any]) -> None:
    """An announcement reaches every other replica, as fleet.py delivers it through RabbitMQ."""
    for index, table in enumerate(tables):
        if index == origin:
            continue
        if kind == "command":
            table.on_command_announced(payload["key"], payload["event_id"], payload["event_type"])
        else:
            table.on_reply_announced(payload["reply"], {}, relayed_here=False)


def test_replicas_count_each_outcome_once_through_announcements() -> None:
    """Three tables wired by an in-memory fan-out, as fleet.py wires them through RabbitMQ."""
    config = CorrelationConfig(timeout_seconds=10)
    clock = Clock()
    metrics = [Metrics() for _ in range(3)]
    tables = [CorrelationTable(config, m, clock=clock) for m in metrics]
    sent: list[tuple[int, str, dict[str, Any]]] = []

    def announcer(origin: int) -> Any:
        def announce(kind: str, payload: dict[str, Any]) -> None:
            sent.append((origin, kind, payload))
            fan_out(tables, origin, kind, payload)

        return announce

    for index, table in enumerate(tables):
        table.join_fleet(announcer(index))
    command = ce(event("io.lamassu.iotcore.config.request", "cmd-1"))
    tables[0].command_sent(command)  # sent by replica 0
    reply = ce(event("io.lamassu.iotcore.config.response", "cmd-1"))  # v1 convention: same id
    assert tables[2].reply_received(reply, {}) == "announced"  # polled by replica 2
    own = ce(event("io.lamassu.iotcore.config.request", "cmd-2"))
    tables[1].command_sent(own)
    assert tables[1].reply_received(ce(event("io.lamassu.iotcore.config.response", "cmd-2")), {}) == MATCHED
    late = ce(event("io.lamassu.iotcore.config.response", "cmd-unknown"))
    assert tables[1].reply_received(late, {}) == PARKED  # an orphan unless its command is announced soon
    expiring = ce(event("io.lamassu.iotcore.config.request", "cmd-3"))
    tables[2].command_sent(expiring)
    clock.now += 11
    for table in tables:
        table.expire()

    def total(name: str, **labels: str) -> float:
        return sum(value(m, name, **labels) for m in metrics)

    assert total("replies_correlated_total", outcome="matched") == 2
    assert value(metrics[0], "replies_correlated_total", outcome="matched") == 1  # where it was sent
    assert total("replies_correlated_total", outcome="orphan") == 1
    assert total("commands_expired_total", event_type="io.lamassu.iotcore.config.request") == 1
    assert total("commands_tracked_total", event_type="io.lamassu.iotcore.config.request") == 3
    assert [kind for _, kind, _ in sent] == ["command", "reply", "command", "command"]  # one reply announced
    assert all(len(table) == 0 for table in tables)


async def test_a_reply_that_overtakes_its_command_announcement_still_reaches_its_owner() -> None:
    """Replica 2 polls the reply before replica 0's announcement of the command reaches it (a quick
    Lambda, a loaded broker): the reply waits, and is handed to its owner when the announcement comes."""
    config = CorrelationConfig(timeout_seconds=30)
    clock = Clock()
    metrics = [Metrics() for _ in range(3)]
    tables = [CorrelationTable(config, m, clock=clock) for m in metrics]
    in_transit: list[tuple[int, str, dict[str, Any]]] = []  # announcements not delivered yet

    def deliver() -> None:
        while in_transit:
            fan_out(tables, *in_transit.pop(0))

    for index, table in enumerate(tables):
        table.join_fleet(lambda kind, payload, origin=index: in_transit.append((origin, kind, payload)))
    owner_waits = tables[0].wait_for_reply(ce(event("io.lamassu.iotcore.config.request", "cmd-1")))
    tables[0].command_sent(ce(event("io.lamassu.iotcore.config.request", "cmd-1")))
    reply = ce(event("io.lamassu.iotcore.config.response", "cmd-1"))
    assert tables[2].reply_received(reply, {}) == PARKED  # the announcement is still on its way
    clock.now += FLEET_GRACE_SECONDS / 2
    deliver()  # the command announcement arrives at 1 and 2; 2 hands the parked reply over; 0 gets it
    deliver()
    assert owner_waits.done() and owner_waits.result().id == "cmd-1"
    # The owner's own reply, polled before SQS's confirm registered the command there.
    assert tables[1].reply_received(ce(event("io.lamassu.iotcore.config.response", "cmd-2")), {}) == PARKED
    tables[1].command_sent(ce(event("io.lamassu.iotcore.config.request", "cmd-2")))
    deliver()
    # A reply that answers nothing is counted as an orphan once the grace period is over.
    assert tables[2].reply_received(ce(event("io.lamassu.iotcore.config.response", "cmd-x")), {}) == PARKED
    clock.now += FLEET_GRACE_SECONDS
    for table in tables:
        table.expire()
    deliver()
    clock.now += 30  # what the others kept of cmd-2 expires there, uncounted (its owner counted it)
    for table in tables:
        table.expire()

    def total(name: str, **labels: str) -> float:
        return sum(value(m, name, **labels) for m in metrics)

    assert value(metrics[0], "replies_correlated_total", outcome="matched") == 1  # where cmd-1 was sent
    assert value(metrics[1], "replies_correlated_total", outcome="matched") == 1  # cmd-2
    assert total("replies_correlated_total", outcome="matched") == 2
    assert total("replies_correlated_total", outcome="orphan") == 1
    assert total("commands_expired_total", event_type="io.lamassu.iotcore.config.request") == 0
    assert all(len(table) == 0 for table in tables)


@pytest.mark.integration
async def test_a_stop_refuses_new_commands_and_answers_waiting_callers_within_the_grace(world: World) -> None:
    token = "t0ken-for-the-command-api"
    settings = world.settings(
        http={"commands": True, "commands_timeout_seconds": 30, "auth_token": token}, shutdown={"grace_seconds": 3}
    )
    service = Service(settings)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.started.wait(), 30)
    base = f"http://127.0.0.1:{service.http.port}/v1/commands"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        unanswered = event("io.lamassu.iotcore.thing.config.request", data={"device_id": "d"})
        waiting = asyncio.create_task(session.post(base, data=samples.body(unanswered)))
        await wait_for(lambda: service.correlation.awaited(parse_structured(samples.body(unanswered)).event))
        stop_requested = time.monotonic()
        service.request_stop()
        late = event("io.lamassu.iotcore.thing.config.request", data={"device_id": "late"})
        async with session.post(base, data=samples.body(late)) as response:
            assert response.status == 503 and (await response.json())["error"] == "stopping"
        async with await waiting as response:
            # Not left to its 30 s timeout: answered when the grace is over, its reply still relayed later.
            assert response.status == 503, await response.text()
            assert (await response.json())["correlation_id"] == unanswered["id"]
    assert await asyncio.wait_for(task, 15) == 0
    assert time.monotonic() - stop_requested < 3 + 5  # the grace, and the close of what is left
    assert metric(service, "api_commands", outcome="unavailable") == 2
    sent = [orjson.loads(m["Body"])["id"] for m in await world.take_sqs(world.command_queue, 1)]
    assert sent == [unanswered["id"]]  # the late command never reached SQS
    assert await world.sqs_count(world.command_queue) == 0
