"""Dead-letter tools on a real RabbitMQ and SQS: list leaves everything, replay moves what matches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml

from lamassu_aws_connector import dlq
from lamassu_aws_connector.config import Settings

from . import samples
from .conftest import World, running, wait_for
from .test_inbound import bind_observer, send_replies
from .test_outbound import attributes, metric

pytestmark = pytest.mark.integration


def cli(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "lamassu_aws_connector", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def event(event_type: str, event_id: str, padding: int = 3000) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "lamassu/ca",
            "type": event_type,
            "data": {"name": "CA-test", "status": "REVOKED", "pad": "x" * padding},
        }
    )


async def test_dead_letters_are_listed_kept_and_replayed_after_the_fix(
    world: World, s3_bucket: tuple[str, Any], tmp_path: Path
) -> None:
    bucket, _ = s3_bucket
    # A 1 KiB command queue and no claim-check bucket: every 3 KB event is dead-lettered as too_large.
    await world.create_sqs_queue(world.command_queue, {"MaximumMessageSize": "1024"})
    oversize = {
        "ca-1": event("io.lamassu.ca.update", "ca-1"),
        "ca-2": event("io.lamassu.ca.update", "ca-2"),
        "dev-1": event("io.lamassu.device.create", "dev-1"),
    }
    broken = b'{"specversion": "1.0", "id": "broken'
    settings = world.settings()
    async with running(settings) as service:
        for raw in oversize.values():
            await world.publish(raw, routing_key="io.lamassu.x")
        await world.publish(broken, exchange="", content_type="text/json")
        await wait_for(lambda: metric(service, "events_dead_lettered", code="too_large") == 3, what="3 too_large")
        await wait_for(lambda: metric(service, "events_dead_lettered", code="invalid_json") == 1, what="1 invalid")

    # list: everything is shown, nothing is consumed, the order is kept.
    depth, letters = await dlq.list_dead_letters(settings, None, limit=10)
    assert depth == 4 and await world.queue_depth(world.dlq) == 4
    assert sorted(letter.code for letter in letters) == ["invalid_json", *["too_large"] * 3]
    assert sorted(letter.event_id for letter in letters if letter.code == "too_large") == ["ca-1", "ca-2", "dev-1"]
    assert all(letter.age_seconds is not None and letter.age_seconds >= 0 for letter in letters)
    _, again = await dlq.list_dead_letters(settings, "events", limit=2)
    assert [letter.event_id for letter in again] == [letter.event_id for letter in letters[:2]]
    shown = cli(settings, tmp_path, "dlq", "list")
    assert shown.returncode == 0, shown.stderr
    assert f"{world.dlq}: 4 message(s)" in shown.stdout and shown.stdout.count("too_large") == 3
    assert await world.queue_depth(world.dlq) == 4

    # dry run: reports what matches, changes nothing.
    dry = await dlq.replay(settings, code="too_large", dry_run=True)
    assert (dry.seen, len(dry.matched), dry.replayed, dry.kept) == (4, 3, 0, 1)
    shown = cli(settings, tmp_path, "dlq", "replay", "--code", "too_large", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "would replay 3, kept 1" in shown.stdout
    assert await world.queue_depth(world.dlq) == 4
    assert await world.sqs_count(world.command_queue) == 0

    # The fix: a claim-check bucket. Replay by type, then by code; the broken event stays.
    fixed = world.settings(claim_check={"bucket": bucket})
    async with running(fixed) as service:
        by_type = await dlq.replay(fixed, type_glob="io.lamassu.ca.*")
        assert (by_type.replayed, by_type.kept, by_type.failed) == (2, 2, 0)
        shown = cli(fixed, tmp_path, "dlq", "replay", "--code", "too_large")
        assert shown.returncode == 0, shown.stderr
        assert "replayed 1, kept 1, failed 0" in shown.stdout
        received = await world.take_sqs(world.command_queue, 3)
        await wait_for(lambda: metric(service, "claim_checked") == 3, what="3 claim-checked")
    assert sorted(attributes(message)["ce-id"] for message in received) == ["ca-1", "ca-2", "dev-1"]
    assert all(attributes(message)["ce-dataref"].startswith(f"s3://{bucket}/") for message in received)
    [left] = await world.take_amqp(world.dlq, 1)
    assert left.body == broken and left.headers["x-error-code"] == "invalid_json"
    assert await world.queue_depth(world.dlq) == 0


async def test_replay_goes_to_the_connector_alone_unless_asked_for_the_original_exchange(world: World) -> None:
    await world.create_sqs_queue(world.command_queue, {"MaximumMessageSize": "1024"})
    # Another Lamassu service subscribed to the same exchange.
    channel = await world.channel()
    exchange = await channel.declare_exchange(world.exchange, "topic", durable=True)
    other = await channel.declare_queue(f"t{world.tag}.other-service", durable=False)
    world.amqp_queues.append(other.name)
    await other.bind(exchange, routing_key="io.lamassu.ca.#")
    settings = world.settings()
    raw = event("io.lamassu.ca.update", "ca-9")
    async with running(settings) as service:
        await world.publish(raw, routing_key="io.lamassu.ca.update")
        await wait_for(lambda: metric(service, "events_dead_lettered", code="too_large") == 1, what="dead-lettered")
        [letter] = (await dlq.list_dead_letters(settings))[1]
        assert letter.event_id == "ca-9" and not letter.is_reply
        # to_original: back to the exchange RabbitMQ said it came from, so every subscriber gets it.
        assert (await dlq.replay(settings, to_original=True)).replayed == 1
        await wait_for(lambda: metric(service, "events_dead_lettered", code="too_large") == 2, what="again")
        assert await world.queue_depth(other.name) == 2
        # The default: to the connector's own queue alone.
        assert (await dlq.replay(settings)).replayed == 1
        await wait_for(lambda: metric(service, "events_dead_lettered", code="too_large") == 3, what="third time")
    assert await world.queue_depth(other.name) == 2  # nobody else saw the plain replay
    [dead] = await world.take_amqp(world.dlq, 1)
    assert dead.body == raw
    # Provenance is what RabbitMQ reported for the last delivery, never a header carried along.
    assert dead.headers["x-original-exchange"] == ""
    assert dead.headers["x-original-routing-key"] == world.queue
    _, replayed = await world.take_amqp(other.name, 2)
    assert replayed.body == raw
    assert not [
        key for key in replayed.headers or {} if key.startswith(("x-error-", "x-dead-lettered-", "x-original-"))
    ]
    assert all(isinstance(value, str) for value in (replayed.headers or {}).values())


async def test_replay_trusts_the_queue_and_the_configuration_not_the_headers(world: World) -> None:
    """A dead letter carrying forged x-sqs-* / x-original-* headers is replayed where the
    configuration says, and nowhere else; what is not a valid event stays in the queue."""
    decoy = f"t{world.tag}-decoy"
    await world.create_sqs_queue(decoy)
    await world.create_sqs_queue(world.command_queue, {"MaximumMessageSize": "1024"})
    channel = await world.channel()
    elsewhere = await channel.declare_exchange(f"t{world.tag}.elsewhere", "topic", durable=False)
    world.exchanges.append(elsewhere.name)
    listener = await channel.declare_queue(f"t{world.tag}.elsewhere-listener", durable=False)
    world.amqp_queues.append(listener.name)
    await listener.bind(elsewhere, routing_key="#")
    settings = world.settings()
    forged = {
        "x-sqs-queue": decoy,
        "x-sqs-message-id": "m-1",
        "x-sqs-attribute-ce-type": "forged",
        "x-original-exchange": elsewhere.name,
        "x-original-routing-key": "anything",
    }
    big = event("io.lamassu.ca.update", "ca-forged")
    # Published straight into the dead-letter queue, as someone with broker access could.
    letters = [
        aio_pika.Message(big, headers={**forged, "x-error-code": "too_large"}),
        aio_pika.Message(b'{"not": "an event"}', headers={**forged, "x-error-code": "invalid_json"}),
    ]
    async with running(settings) as service:  # it declares the dead-letter queue
        for message in letters:
            await channel.default_exchange.publish(message, routing_key=world.dlq)
        rehearsed = await dlq.replay(settings, to_original=True, dry_run=True)  # a dry run checks alike
        assert (len(rehearsed.matched), rehearsed.failed) == (0, 2)
        assert await world.queue_depth(world.dlq) == 2
        to_original = await dlq.replay(settings, to_original=True)
        assert (to_original.replayed, to_original.failed) == (0, 2)
        assert any("not one of amqp.exchanges" in error for error in to_original.errors)
        assert any("not a valid event" in error for error in to_original.errors)
        plain = await dlq.replay(settings)
        assert (plain.replayed, plain.failed) == (1, 1)  # the valid one, to the connector's own queue
        await wait_for(lambda: metric(service, "events_dead_lettered", code="too_large") == 1, what="seen again")
    assert await world.sqs_count(decoy) == 0  # nothing reached the queue the headers named
    assert await world.queue_depth(listener.name) == 0  # nor the exchange
    assert await world.queue_depth(world.dlq) == 2  # the invalid one kept, the valid one back as too_large


async def test_reply_dead_letters_go_back_through_sqs(world: World) -> None:
    reply = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "reply-1",
            "source": "aws/lambda",
            "type": "io.lamassu.iotcore.config.response",
            "data": {"account_id": "123456789012"},
        }
    )
    # A reply exchange of its own: the events queue binds "#" on the default one, routing everything.
    world.reply_exchange = f"t{world.tag}.replies"
    world.exchanges.append(world.reply_exchange)
    settings = world.settings(amqp={"reply_exchange": world.reply_exchange}, sqs={"unroutable_max_receives": 1})
    async with running(settings) as service:
        # Nobody is bound for the reply's type yet: dead-lettered as unroutable at its first receive.
        await send_replies(world, [reply], traceparent=samples.W3C_TRACEPARENT)
        await wait_for(lambda: metric(service, "replies_dead_lettered", code="unroutable") == 1, what="unroutable")
        [letter] = (await dlq.list_dead_letters(settings, "replies"))[1]
        assert (letter.code, letter.event_id, letter.is_reply) == ("unroutable", "reply-1", True)
        observer = await bind_observer(world)
        result = await dlq.replay(settings, "replies", code="unroutable")
        assert (result.replayed, result.kept) == (1, 0)
        [relayed] = await world.take_amqp(observer.name, 1)
    assert relayed.body == reply
    assert relayed.headers["traceparent"] == samples.W3C_TRACEPARENT  # the SQS attribute came back
    assert await world.queue_depth(world.reply_dlq) == 0


async def test_send_publishes_valid_files_and_refuses_bad_ones(world: World, tmp_path: Path) -> None:
    good = [tmp_path / "a.json", tmp_path / "b.json"]
    good[0].write_bytes(samples.body(samples.v1_ca_update()))
    good[1].write_bytes(samples.body(samples.v3_device_create()))
    bad = tmp_path / "bad.json"
    bad.write_bytes(samples.BAD_BODIES["time_js"][0])
    settings = world.settings()
    async with running(settings):
        refused = cli(settings, tmp_path, "send", str(good[0]), str(bad))
        assert refused.returncode == 2 and str(bad) in refused.stderr and "invalid_attribute" in refused.stderr
        sent = cli(settings, tmp_path, "send", *map(str, good))
        assert sent.returncode == 0, sent.stderr
        received = await world.take_sqs(world.command_queue, 2)
    assert sorted(message["Body"].encode() for message in received) == sorted(path.read_bytes() for path in good)
    assert await world.sqs_count(world.command_queue) == 0


def letter(event_id: str, code: str, **headers: str) -> aio_pika.Message:
    """A dead letter as the connector writes one (published straight into the queue)."""
    return aio_pika.Message(
        event("io.lamassu.ca.update", event_id, padding=10),
        headers={"x-error-code": code, "x-error-message": f"why {event_id}", **headers},
        message_id=f"amqp-{event_id}",
    )


async def test_show_purge_and_the_id_filter(world: World, tmp_path: Path) -> None:
    settings = world.settings()
    channel = await world.channel()
    async with running(settings):  # declares both dead-letter queues and the events queue
        pass
    for event_id, code in (("a-1", "too_large"), ("a-2", "invalid_data"), ("a-3", "too_large"), ("a-2", "too_large")):
        await channel.default_exchange.publish(letter(event_id, code), routing_key=world.dlq)
    reply = letter("r-1", "unroutable", **{"x-sqs-message-id": "sqs-msg-9"})
    await channel.default_exchange.publish(reply, routing_key=world.reply_dlq)

    # list --id: every letter with that id, wherever it is in the queue; nothing moves.
    depth, found = await dlq.list_dead_letters(settings, event_id="a-2")
    assert depth == 4 and [(x.event_id, x.code) for x in found] == [("a-2", "invalid_data"), ("a-2", "too_large")]
    shown = cli(settings, tmp_path, "dlq", "list", "--id", "a-3")
    assert shown.returncode == 0 and "showing 1 with id a-3" in shown.stdout
    assert [line.split()[3] for line in shown.stdout.splitlines()[1:]] == ["a-3"]

    # show: the whole letter, by event id, AMQP message id, or (replies) SQS message id; it stays.
    shown = cli(settings, tmp_path, "dlq", "show", "a-1")
    assert shown.returncode == 0, shown.stderr
    assert "x-error-message: why a-1" in shown.stdout and "message_id: amqp-a-1" in shown.stdout
    assert event("io.lamassu.ca.update", "a-1", padding=10).decode() in shown.stdout
    assert "1 dead letter(s) with id a-1 (of 4" in shown.stdout
    [by_sqs_id] = (await dlq.show_dead_letters(settings, "sqs-msg-9", "replies"))[1]
    assert by_sqs_id.letter.is_reply and by_sqs_id.headers["x-sqs-message-id"] == "sqs-msg-9"
    [detail] = (await dlq.show_dead_letters(settings, "amqp-a-3"))[1]
    assert detail.letter.event_id == "a-3" and detail.headers["x-error-code"] == "too_large"
    missing = cli(settings, tmp_path, "dlq", "show", "nope")
    assert missing.returncode == 1 and "no dead letter with id 'nope'" in missing.stderr
    big = letter("big-1", "too_large")
    big.body = b'{"id": "big-1", "data": "' + b"x" * 100_000 + b'"}'
    await channel.default_exchange.publish(big, routing_key=world.reply_dlq)
    cut = cli(settings, tmp_path, "dlq", "show", "big-1")
    assert (
        cut.returncode == 0 and f"[... {len(big.body) - 65536} more bytes; --full shows the whole body]" in cut.stdout
    )
    whole = cli(settings, tmp_path, "dlq", "show", "big-1", "--full")
    assert big.body.decode() in whole.stdout and "more bytes" not in whole.stdout
    assert (await dlq.purge(settings, "replies", event_id="big-1")).purged == 1
    # Without --queue, an id copied from an inbound.dead_lettered line is found among the replies too.
    shown = cli(settings, tmp_path, "dlq", "show", "sqs-msg-9")
    assert shown.returncode == 0 and "x-sqs-message-id: sqs-msg-9" in shown.stdout, shown.stderr
    assert await world.queue_depth(world.dlq) == 4 and await world.queue_depth(world.reply_dlq) == 1

    # purge: without --yes it only says what it would delete; with it, only what matches goes.
    dry = cli(settings, tmp_path, "dlq", "purge", "--code", "too_large")
    assert dry.returncode == 0 and "would purge 3, keep 1 (of 4 seen); nothing deleted" in dry.stdout
    assert await world.queue_depth(world.dlq) == 4
    with pytest.raises(dlq.ToolError, match="--code or --id"):  # no filter: refused (the CLI exits 2)
        await dlq.purge(settings)
    replies_to_original = cli(settings, tmp_path, "dlq", "replay", "--queue", "replies", "--to-original")
    assert (
        replies_to_original.returncode == 2
        and "--to-original is for dead-lettered events" in replies_to_original.stderr
    )
    typo = cli(settings, tmp_path, "dlq", "purge", "--code", "too-large", "--yes")  # matches nothing: refused
    assert typo.returncode == 2 and "unknown --code 'too-large'" in typo.stderr and "too_large" in typo.stderr
    purged = cli(settings, tmp_path, "dlq", "purge", "--code", "too_large", "--id", "a-2", "--yes")
    assert purged.returncode == 0 and "purged 1, kept 3 (of 4 seen)" in purged.stdout
    assert [x.event_id for x in (await dlq.list_dead_letters(settings))[1]] == ["a-1", "a-2", "a-3"]  # order kept
    result = await dlq.purge(settings, code="too_large", type_glob="io.lamassu.ca.*")
    assert (result.purged, result.kept) == (2, 1)

    # replay --id: only that letter moves.
    await channel.default_exchange.publish(letter("b-1", "too_large"), routing_key=world.dlq)
    dry_replay = await dlq.replay(settings, event_id="b-1", dry_run=True)
    assert [x.event_id for x in dry_replay.matched] == ["b-1"] and dry_replay.kept == 1
    moved = cli(settings, tmp_path, "dlq", "replay", "--id", "b-1")
    assert moved.returncode == 0 and "replayed 1, kept 1, failed 0 (of 2 seen)" in moved.stdout
    [back] = await world.take_amqp(world.queue, 1)
    assert orjson.loads(back.body)["id"] == "b-1"
    assert [x.event_id for x in (await dlq.list_dead_letters(settings))[1]] == ["a-2"]


async def test_send_names_each_event_and_an_example_arrives_in_sqs(world: World, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "events" / "certificate.status.update.json"
    settings = world.settings()
    async with running(settings):
        sent = cli(settings, tmp_path, "send", str(example))
        assert sent.returncode == 0, sent.stderr
        [message] = await world.take_sqs(world.command_queue, 1)
    event_id = orjson.loads(example.read_bytes())["id"]
    assert f"sent: {event_id}  certificate.status.update" in sent.stdout
    assert f"sent 1 event(s) to exchange {world.exchange}" in sent.stdout
    assert message["Body"].encode() == example.read_bytes().rstrip(b"\n")  # byte for byte, as validated
    assert attributes(message)["ce-type"] == "certificate.status.update"
