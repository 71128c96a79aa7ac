"""Scenarios 12a-12e: the failure model (outcomes.py) under the faults production brings.

* 12a: the SQS command queue deleted mid-stream, re-created 20 s later: nothing dead-lettered,
  /readyz names the queue within 30 s, everything delivered once it is back.
* 12b: credentials refused (403 AccessDenied, 400 InvalidIdentityToken) for 20 s, then accepted.
* 12c: 12 poison replies (an id or a type longer than AMQP carries, 200 KB of SQS attributes, a
  claim-check dataref whose key S3 cannot hold) among 500 good ones: the poison in the reply DLQ,
  every good reply relayed, the response queue empty, and the AMQP connection never re-opened.
* 12d: S3 unreachable for 30 s while every event goes through the claim-check.
* 12e: a message that kills the connector (SIGKILL, as the OOM killer does) every time it is
  handled: dead-lettered as redelivery_limit after amqp.redelivery_limit deaths, not a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import orjson
import pytest

from lamassu_aws_connector.config import Settings

from ..conftest import SQS_ENDPOINT, wait_for
from ..faultproxy import FaultProxy
from ..tcpproxy import TcpProxy
from .crashing_connector import POISON_MARKER
from .driver import (
    REPLY_TYPE,
    AmqpCounter,
    Connector,
    Env,
    Figures,
    Names,
    Publisher,
    Run,
    SqsCounter,
    assert_no_secrets,
    connector_config,
    event,
    outbound_scenario,
    poll,
    queue_depth,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

READY_DOWN_WITHIN = 30.0  # seconds: how soon /readyz must name a dependency that went away


async def _reported_down(run: Run, check: str, started: float) -> None:
    """Wait until every live connector's /readyz is 503 naming ``check``; note after how long."""

    async def down() -> bool:
        for connector in run.connectors:
            status, body = await connector.readiness()
            if status != 503 or check not in body.get("down", []):
                return False
        return True

    await poll(down, READY_DOWN_WITHIN, f"/readyz to report {check} down", interval=0.25)
    run.notes[f"{check}_down_after_seconds"] = round(time.monotonic() - started, 1)


async def test_12a_command_queue_deleted_and_recreated_mid_stream(env: Env) -> None:
    async def fault(run: Run) -> None:
        assert run.publisher is not None and run.counter is not None
        publisher, counter = run.publisher, run.counter
        # A quiet moment first: deleting the queue deletes what it holds, which would be the
        # test's doing, not a loss by the connector.
        publisher.flowing.clear()
        await wait_for(lambda: counter.unique >= len(publisher.sent), 60, "the queue read to the end")
        await poll(lambda: _empty(counter), 30, "SQS queue empty before it is deleted")
        url = await env.sqs_url(run.names.command_queue)
        await env.sqs.delete_queue(QueueUrl=url)
        started = time.monotonic()
        publisher.flowing.set()  # events keep coming while the queue is missing
        await _reported_down(run, "sqs_command_queue", started)
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - started)))
        [connector] = run.connectors
        run.notes["dead_lettered_while_missing"] = await queue_depth(env.test_url, run.names.dlq)
        run.notes["held_while_missing"] = len(publisher.sent) - counter.unique
        await env.sqs.create_queue(QueueName=run.names.command_queue)
        run.cleared()
        assert connector.running

    figures, run = await outbound_scenario(
        env, "12a-command-queue-deleted", "SQS command queue deleted mid-stream, re-created after 20 s", fault
    )
    [connector] = run.connectors
    assert figures.lost == 0
    assert figures.dead_lettered == 0 and run.notes["dead_lettered_while_missing"] == 0
    assert run.notes["held_while_missing"] > 0  # events really came while the queue was away
    assert run.notes["sqs_command_queue_down_after_seconds"] <= READY_DOWN_WITHIN
    # One warning per change of state, not one per failed call.
    downs = [line for line in connector.log_events("dependency.down") if line["dependency"] == "sqs_command_queue"]
    assert len(downs) == 1, downs
    assert connector.starts == 1


async def _empty(counter: SqsCounter) -> bool:
    return await counter.depth() == 0


async def test_12b_credentials_refused_then_restored(env: Env) -> None:
    proxy = FaultProxy(SQS_ENDPOINT, {"access_denied": 0.5, "invalid_identity_token": 0.5})
    proxy.enabled = False
    await proxy.start()

    async def fault(run: Run) -> None:
        proxy.enabled = True
        started = time.monotonic()
        await _reported_down(run, "sqs_command_queue", started)
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - started)))
        proxy.enabled = False
        run.notes["refusals"] = dict(proxy.injected)
        run.cleared()

    try:
        figures, run = await outbound_scenario(
            env,
            "12b-credentials-refused",
            "Credentials refused (403 AccessDenied, 400 InvalidIdentityToken) for 20 s",
            fault,
            sqs_endpoint=proxy.url,
        )
    finally:
        await proxy.stop()
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    assert run.notes["refusals"]["access_denied"] > 0 and run.notes["refusals"]["invalid_identity_token"] > 0


POISON_REPLY_BUCKET = "rel-replies"  # named as a bucket replies may use; never read: the keys cannot exist


def _poison_replies(tag: str, first: int) -> list[tuple[int, dict[str, Any], str]]:
    """(seq, SQS entry, expected x-error-code) of twelve replies that can never be relayed."""
    poison = []
    for index in range(12):
        seq = first + index
        body = orjson.loads(event(tag, seq, REPLY_TYPE))
        attributes: dict[str, Any] = {}
        if index < 3:
            body["id"] = f"{seq}-" + "i" * 300  # AMQP message-id is a shortstr: at most 255 bytes
            code = "amqp_rejected"
        elif index < 6:
            body["type"] = REPLY_TYPE + "." + "t" * 300  # the routing key too
            code = "amqp_rejected"
        elif index < 10:
            body = {"data": {"seq": seq}, "note": "not a CloudEvent"}
            attributes = {f"big{n}": {"DataType": "String", "StringValue": "a" * 50_000} for n in range(4)}
            code = "not_cloudevent"
        else:  # a claim-check dataref whose key is longer than S3 allows: no S3 answer can ever resolve it
            body.pop("data", None)
            body["datacontenttype"] = "application/json"
            body["dataref"] = f"s3://{POISON_REPLY_BUCKET}/{seq}-" + "k" * 2000
            code = "dataref_unresolved"
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": orjson.dumps(body).decode()}
        if attributes:
            entry["MessageAttributes"] = attributes
        poison.append((seq, entry, code))
    return poison


async def test_12c_poison_replies_among_good_ones(env: Env) -> None:
    names = Names()
    config = connector_config(
        names,
        env.amqp_url,
        env.sqs_endpoint,
        sqs={"visibility_timeout": 10},
        claim_check={"reply_buckets": [POISON_REPLY_BUCKET], "endpoint_url": env.sqs_endpoint},
    )
    connector = Connector(config, env.workdir / names.tag)
    relayed = AmqpCounter(env.test_url, names.reply_count_queue)
    dead = AmqpCounter(env.test_url, names.reply_dlq)
    good, first_poison = 500, 1_000_000
    try:
        await connector.start()
        await connector.wait_ready()
        await relayed.start(bind_exchange=names.reply_exchange)
        await dead.start()
        url = await env.sqs_url(names.response_queue)
        poison = _poison_replies(names.tag, first_poison)
        entries: list[dict[str, Any]] = [
            {"MessageBody": event(names.tag, seq, REPLY_TYPE).decode()} for seq in range(good)
        ]
        for index, (_, entry, _) in enumerate(poison):  # spread among the good ones
            entries.insert(25 + index * 50, entry)
        t0 = time.monotonic()
        for start in range(0, len(entries), 10):
            chunk = entries[start : start + 10]
            small = [e for e in chunk if "MessageAttributes" not in e]
            calls = [small, *([e] for e in chunk if "MessageAttributes" in e)]  # a big one goes alone
            for call in calls:
                if call:
                    numbered = [{**e, "Id": str(i)} for i, e in enumerate(call)]
                    response = await env.sqs.send_message_batch(QueueUrl=url, Entries=numbered)
                    assert len(response.get("Successful", [])) == len(call), response
        sent = len(entries)
        good_sent = set(range(good))
        await wait_for(lambda: dead.unique >= len(poison), 90, "every poison reply in the reply DLQ")
        poison_seconds = time.monotonic() - t0
        await wait_for(lambda: relayed.unique >= len(good_sent), 120, "every good reply relayed")
        await poll(lambda: _sqs_depth_zero(env, url), 90, "the response queue empty")
        codes = {seq: message.headers["x-error-code"] for seq, message in dead.messages.items()}
        assert codes == {seq: code for seq, _, code in poison}
        for seq, message in dead.messages.items():
            headers = message.headers
            assert len(orjson.dumps({k: str(v) for k, v in headers.items()})) < 40_000, seq
            if codes[seq] == "not_cloudevent":  # the attributes did not fit: cut or left out, and said so
                assert "x-dead-letter-dropped-headers" in headers or any(
                    str(v).endswith("cut]") for k, v in headers.items() if str(k).startswith("x-sqs-attribute-")
                )
        # The connection was never closed by a frame too large or anything else.
        assert not connector.log_events("amqp.connection_lost")
        assert not connector.log_events("amqp.reconnected")
        assert connector.running and connector.starts == 1
        status, body = await connector.readiness()
        assert status == 200, body
        exit_code = await connector.stop()
        figures = Figures(
            scenario="12c-poison-replies",
            title="12 poison replies (long id, long type, 200 KB of attributes, a dataref key S3 cannot hold) "
            "among 500 good ones",
            sent=sent,
            arrived=len(set(relayed.seen) & good_sent),
            lost=len(good_sent - set(relayed.seen)),
            duplicated=relayed.duplicated,
            dead_lettered=dead.unique,
            recovery_seconds=None,
            drain_seconds=None,
            peak_rss_mb=round(connector.peak_rss_kb / 1024, 1),
            notes={
                "poison_in_dlq_after_seconds": round(poison_seconds, 1),
                "codes": sorted(set(codes.values())),
                "exit_codes": [exit_code],
            },
        )
        figures.save()
        assert figures.lost == 0 and not set(relayed.seen) & {seq for seq, _, _ in poison}
        assert_no_secrets(connector.log_text())
    finally:
        await relayed.close()
        await dead.close()
        if connector.running:
            await connector.kill()
        await env.delete_sqs_queues(names)


async def _sqs_depth_zero(env: Env, url: str) -> bool:
    attributes = (
        await env.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 0
    )


async def test_12d_s3_unreachable_with_claim_check_on(env: Env) -> None:
    host, port = SQS_ENDPOINT.removeprefix("http://").split(":")
    s3 = TcpProxy(host, int(port))  # the connector's only way to S3; SQS is reached directly
    await s3.start()
    bucket = f"rel-{uuid.uuid4().hex[:10]}-claims"

    async def fault(run: Run) -> None:
        await s3.stop()
        started = time.monotonic()
        await _reported_down(run, "s3", started)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - started)))
        await s3.start()
        run.cleared()

    config = {"claim_check": {"bucket": bucket, "threshold_bytes": 1024, "endpoint_url": s3.url}}
    try:
        figures, run = await outbound_scenario(
            env,
            "12d-s3-outage",
            "S3 unreachable for 30 s, every event's data claim-checked to S3",
            fault,
            count=1000,
            rate=200,
            config=config,
            pad=2000,
        )
    finally:
        await s3.stop()
    assert figures.lost == 0
    assert figures.dead_lettered == 0
    [connector] = run.connectors
    assert len(connector.log_events("claimcheck.stored")) >= figures.arrived


async def test_12e_a_message_that_kills_the_connector_is_not_a_crash_loop(env: Env) -> None:
    names = Names()
    limit = Settings().amqp.redelivery_limit
    config = connector_config(names, env.amqp_url, env.sqs_endpoint, amqp={"state_dir": str(env.workdir / "state")})
    connector = Connector(config, env.workdir / names.tag, module="tests.reliability.crashing_connector")
    deaths: list[float] = []
    supervising = True

    async def supervise() -> None:
        """Restart the connector whenever it dies, as Kubernetes or `docker run --restart` would."""
        while supervising:
            assert connector.process is not None
            await connector.process.wait()
            if not supervising:
                return
            deaths.append(time.monotonic())
            await connector.start()

    counter: SqsCounter | None = None
    dead = AmqpCounter(env.test_url, names.dlq)
    publisher: Publisher | None = None
    supervisor: asyncio.Task[None] | None = None
    good, poison_seq = 300, 1_000_000
    try:
        await connector.start()
        await connector.wait_ready()
        supervisor = asyncio.create_task(supervise())
        counter = SqsCounter(env.sqs, await env.sqs_url(names.command_queue)).start()
        await dead.start()
        publisher = await Publisher(env.test_url, names.exchange).open()
        poison = orjson.loads(event(names.tag, poison_seq))
        poison["data"]["marker"] = POISON_MARKER.decode()
        items = [(seq, event(names.tag, seq)) for seq in range(good)]
        items.insert(good // 2, (poison_seq, orjson.dumps(poison)))
        await publisher.stream(items, 200)
        await wait_for(lambda: dead.unique >= 1, 180, "the poison message dead-lettered")
        set_aside = time.monotonic()
        await wait_for(lambda: counter is not None and counter.unique >= good, 120, "every good event in SQS")
        await connector.wait_ready(60)
        await poll(lambda: _events_queue_empty(env, names), 60, "the events queue empty")
        [(seq, letter)] = dead.messages.items()
        assert seq == poison_seq
        assert letter.headers["x-error-code"] == "redelivery_limit"
        assert len(deaths) == limit + 1, f"{len(deaths)} deaths"  # the first delivery and `limit` strikes
        supervising = False
        exit_code = await connector.stop()
        figures = Figures(
            scenario="12e-crash-on-delivery",
            title="A message that kills the connector (SIGKILL) whenever it is handled, among 300 good ones",
            sent=len(publisher.sent),
            arrived=counter.unique,
            lost=good - len(set(counter.seen) & set(range(good))),
            duplicated=counter.duplicated,
            dead_lettered=dead.unique,
            recovery_seconds=round(set_aside - deaths[0], 1),
            drain_seconds=None,
            peak_rss_mb=round(connector.peak_rss_kb / 1024, 1),
            notes={"deaths": len(deaths), "redelivery_limit": limit, "exit_codes": [exit_code]},
        )
        figures.save()
        assert figures.lost == 0
        assert poison_seq not in counter.seen
        assert_no_secrets(connector.log_text())
    finally:
        supervising = False
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, AssertionError):
                await supervisor
        await dead.close()
        if counter is not None:
            await counter.stop()
        if publisher is not None:
            await publisher.close()
        if connector.running:
            await connector.kill()
        await env.delete_sqs_queues(names)


async def _events_queue_empty(env: Env, names: Names) -> bool:
    return await queue_depth(env.test_url, names.queue) == 0
