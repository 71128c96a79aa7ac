"""The lean AMQP frame reader decodes exactly what pamqp decodes, and fails exactly where it fails.

Unit tests, no broker: frames are built with pamqp's own encoder, decoded both ways and compared
field by field; corrupted frames must get the same verdict (the same object, or the same error).
The integration suite runs every connection of the connector and of the tests through the reader.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any
from unittest import mock

import aiormq.abc
import aiormq.connection
import aiormq.exceptions
import pamqp.frame
import pytest
from aio_pika.abc import DeliveryMode
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body, commands, header, heartbeat

from lamassu_aws_connector import amqp  # noqa: F401 - importing it installs the reader
from lamassu_aws_connector.amqp import vhost_refusal
from lamassu_aws_connector.amqp_wire import (
    AiormqFrameReceiver,
    LeanFrameReceiver,
    decode_frame,
    encode_frames,
    install,
    pamqp_marshall,
)

short_text = st.text(max_size=40)
names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,40}", fullmatch=True)
u64 = st.integers(min_value=0, max_value=2**63 - 1)  # pamqp encodes longlong signed
scalars = st.one_of(
    st.text(max_size=30),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.none(),
)
table_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
timestamps = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
).map(lambda moment: moment.replace(microsecond=0))

properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | short_text,
    content_encoding=st.none() | short_text,
    headers=st.none() | st.dictionaries(st.text(min_size=1, max_size=20), table_values, max_size=6),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(min_value=0, max_value=9),
    correlation_id=st.none() | short_text,
    reply_to=st.none() | short_text,
    expiration=st.none() | st.from_regex(r"[0-9]{1,9}", fullmatch=True),
    message_id=st.none() | short_text,
    timestamp=st.none() | timestamps,
    message_type=st.none() | short_text,
    user_id=st.none() | short_text,
    app_id=st.none() | short_text,
)

frames = st.one_of(
    st.builds(commands.Basic.Deliver, short_text, u64, st.booleans(), names, short_text),
    st.builds(commands.Basic.Ack, u64, st.booleans()),
    st.builds(commands.Basic.Nack, u64, st.booleans(), st.booleans()),
    st.builds(header.ContentHeader, st.just(0), u64, properties),
    st.builds(body.ContentBody, st.binary(min_size=1, max_size=300)),
    st.builds(commands.Basic.ConsumeOk, short_text),
    st.builds(commands.Basic.Cancel, short_text, st.booleans()),
    st.builds(commands.Channel.Close, st.integers(min_value=200, max_value=599), short_text, st.just(60), st.just(40)),
    st.just(heartbeat.Heartbeat()),
)
channels = st.integers(min_value=0, max_value=2047)
FAST = (commands.Basic.Deliver, commands.Basic.Ack, commands.Basic.Nack, header.ContentHeader, body.ContentBody)


def fields(frame: Any) -> Any:
    """What a reader of the frame can see: its type and every field's value."""
    if isinstance(frame, header.ContentHeader):
        props = frame.properties
        return (type(frame), frame.class_id, frame.weight, frame.body_size, fields_of(props))
    if isinstance(frame, body.ContentBody):
        return (type(frame), bytes(frame.value))
    return (type(frame), fields_of(frame))


def fields_of(frame: Any) -> dict[str, Any]:
    return {name: getattr(frame, name) for name in getattr(frame, "__slots__", ())}


def verdict(decode: Any, data: bytes) -> Any:
    """What decoding ``data`` as the receiver reads it gives: the frame's fields, or the error."""
    size = int.from_bytes(data[3:7], "big")
    try:
        if decode is pamqp.frame.unmarshal:
            weight, channel, frame = decode(data)
        else:
            weight, channel, frame = decode(data[:7], data[7 : 7 + size + 1])
    except Exception as error:  # the verdict is the error itself
        return ("error", type(error), re.sub(r" at 0x[0-9a-f]+", "", str(error)))  # pamqp names the object
    return weight, channel, fields(frame)


@given(frames, channels)
def test_every_frame_decodes_as_pamqp_decodes_it(frame: Any, channel: int) -> None:
    data = pamqp.frame.marshal(frame, channel)
    assert verdict(decode_frame, data) == verdict(pamqp.frame.unmarshal, data)
    if isinstance(frame, FAST):  # and decoded without pamqp, or the reader gains nothing
        with mock.patch.object(pamqp.frame, "unmarshal", side_effect=AssertionError("pamqp called")):
            weight, decoded_channel, _ = decode_frame(data[:7], data[7:])
        assert (weight, decoded_channel) == (len(data), channel)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=400)
@given(frames, channels, st.data())
def test_a_corrupted_frame_gets_pamqps_verdict(frame: Any, channel: int, data: st.DataObject) -> None:
    wire = bytearray(pamqp.frame.marshal(frame, channel))
    at = data.draw(st.integers(min_value=0, max_value=len(wire) - 1), label="position")
    wire[at] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    cut = data.draw(st.integers(min_value=8, max_value=len(wire)), label="kept")
    corrupted = bytes(wire[:cut])
    assert verdict(decode_frame, corrupted) == verdict(pamqp.frame.unmarshal, corrupted)


def test_fields_overrunning_the_frame_are_pamqps_to_judge() -> None:
    """A string length that runs past the payload: the fast decoder must not read the frame-end octet."""
    wire = bytearray(pamqp.frame.marshal(commands.Basic.Deliver("tag", 7, False, "x", "rk"), 1))
    wire[-4] = 200  # the routing key's length byte
    assert verdict(decode_frame, bytes(wire)) == verdict(pamqp.frame.unmarshal, bytes(wire))
    props = commands.Basic.Properties(content_type="text/json", timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    wire = bytearray(pamqp.frame.marshal(header.ContentHeader(0, 5, props), 1))
    wire[6] -= 4  # the payload now ends inside the timestamp
    del wire[-5:-1]
    assert verdict(decode_frame, bytes(wire)) == verdict(pamqp.frame.unmarshal, bytes(wire))


async def read_all(receiver: aiormq.connection.FrameReceiver) -> list[Any]:
    out = []
    try:
        while True:
            weight, channel, frame = await receiver.get_frame()
            out.append((weight, channel, fields(frame)))
    except StopAsyncIteration:
        return out
    except AMQPConnectionError:  # the end came mid-read (the counts it names differ: aiormq reads 1 + 6 bytes)
        return [*out, "closed"]


@settings(max_examples=60)
@given(st.lists(st.tuples(frames, channels), min_size=1, max_size=12), st.data())
def test_the_receiver_reads_a_stream_in_any_chunks_as_aiormq_does(
    sent: list[tuple[Any, int]], data: st.DataObject
) -> None:
    stream = b"".join(pamqp.frame.marshal(frame, channel) for frame, channel in sent)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=8), label="cuts"))

    async def run(receiver_class: type[aiormq.connection.FrameReceiver]) -> list[Any]:
        reader = asyncio.StreamReader()

        async def feed() -> None:
            start = 0
            for cut in [*cuts, len(stream)]:
                reader.feed_data(stream[start:cut])
                start = cut
                await asyncio.sleep(0)
            reader.feed_eof()

        feeding = asyncio.create_task(feed())
        frames_read = await read_all(receiver_class(reader))
        await feeding
        return frames_read

    assert asyncio.run(run(LeanFrameReceiver)) == asyncio.run(run(AiormqFrameReceiver))


@pytest.mark.parametrize(
    ("stream", "error", "message"),
    [
        (b"AMQP\x00\x00\x09\x01", ProtocolSyntaxError, "Unexpected AMQP protocol header"),
        (b"\x01\x00\x01\x00\x00\x00\x10abc", AMQPConnectionError, "Read 3 bytes but 17 bytes expected"),
        (b"\x03\x00\x01\x00\x00\x00\x02ab\x00", InvalidFrameError, "Last byte error"),
    ],
)
async def test_the_receiver_fails_as_aiormq_does(stream: bytes, error: type[Exception], message: str) -> None:
    for receiver_class in (LeanFrameReceiver, AiormqFrameReceiver):
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        with pytest.raises(error, match=message):
            await receiver_class(reader).get_frame()


def test_importing_the_adapter_installs_the_reader() -> None:
    assert aiormq.connection.FrameReceiver is LeanFrameReceiver
    assert install()


string_headers = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=8)
outgoing = st.one_of(
    st.builds(commands.Basic.Publish, exchange=names, routing_key=short_text, mandatory=st.booleans(),
              immediate=st.booleans()),
    st.builds(commands.Basic.Ack, u64, st.booleans()),
    st.builds(header.ContentHeader, st.just(0), u64, properties),
    st.builds(header.ContentHeader, st.just(0), u64,
              st.builds(commands.Basic.Properties, headers=string_headers, delivery_mode=st.just(2),
                        message_id=short_text, app_id=short_text, content_type=st.none() | short_text,
                        priority=st.none() | st.sampled_from([*DeliveryMode, True]))),
    st.builds(body.ContentBody, st.binary(min_size=1, max_size=300)),
)  # fmt: skip


@given(st.lists(outgoing, min_size=1, max_size=5), channels)
def test_outgoing_frames_are_written_byte_for_byte_as_pamqp_writes_them(sent: list[Any], channel: int) -> None:
    expected = b"".join(pamqp.frame.marshal(frame, channel) for frame in sent)
    with mock.patch.object(pamqp.frame, "marshal", side_effect=AssertionError("pamqp called")):
        assert encode_frames(sent, channel) == expected
        assert aiormq.abc.ChannelFrame.marshall(channel, sent).payload == expected


@given(st.lists(st.one_of(outgoing, frames), min_size=1, max_size=5), channels)
def test_any_other_frame_goes_to_pamqp(sent: list[Any], channel: int) -> None:
    """A frame the writer does not know (or a list with one) is aiormq's and pamqp's, CloseOk's
    connection close included."""
    sent = [*sent, commands.Connection.CloseOk()] if len(sent) % 2 else sent
    ours = aiormq.abc.ChannelFrame.marshall(channel, iter(sent))
    theirs = pamqp_marshall(aiormq.abc.ChannelFrame, channel, sent)
    assert (ours.payload, ours.should_close) == (theirs.payload, theirs.should_close)


def test_what_pamqp_refuses_is_refused_alike() -> None:
    bad_exchange = commands.Basic.Publish(exchange="ok", routing_key="rk")
    bad_exchange.exchange = "not ok!"  # changed after construction: only marshal's validation sees it
    too_long = commands.Basic.Publish(exchange="ok", routing_key="é" * 200)
    for frame in (bad_exchange, too_long, header.ContentHeader(0, -1, commands.Basic.Properties())):
        with pytest.raises(Exception) as pamqps:  # whatever pamqp raises, ours must be the same
            pamqp.frame.marshal(frame, 1)
        with pytest.raises(type(pamqps.value), match=re.escape(str(pamqps.value))):
            aiormq.abc.ChannelFrame.marshall(1, [frame])


def test_a_header_name_pamqp_truncates_is_written_as_pamqp_writes_it() -> None:
    frame = header.ContentHeader(0, 3, commands.Basic.Properties(headers={"k" * 130: "v", "a": "b"}))
    assert aiormq.abc.ChannelFrame.marshall(1, [frame]).payload == pamqp.frame.marshal(frame, 1)


def test_an_aiormq_that_reads_frames_otherwise_keeps_its_own_reader_and_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherReceiver:
        pass

    marshall = aiormq.abc.ChannelFrame.__dict__["marshall"]
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", OtherReceiver)
    assert not install()
    assert aiormq.connection.FrameReceiver is OtherReceiver
    assert aiormq.abc.ChannelFrame.__dict__["marshall"] is marshall


def test_a_refused_virtual_host_is_named_with_its_user() -> None:
    frame_error = aiormq.exceptions.InvalidFrameError(
        "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x7f>"
    )
    refused = vhost_refusal(frame_error, "amqp://lamassu:s3cret@h:5672/pki%2Fprod")
    assert isinstance(refused, ConnectionError)  # retried like a refused login
    assert "virtual host 'pki/prod' to user 'lamassu'" in str(refused) and "s3cret" not in str(refused)
    assert "virtual host '/'" in str(vhost_refusal(frame_error, "amqp://h"))
    assert vhost_refusal(ConnectionRefusedError(), "amqp://h/") is None


def test_header_values_become_the_text_a_reader_would_write() -> None:
    from lamassu_aws_connector.amqp import string_headers  # noqa: PLC0415

    converted = string_headers(
        {
            "flag": True,
            "absent": None,
            "count": 4,
            "raw": b"\x00\xff",
            "text": bytearray(b"plain"),
            "nested": [1, "x", {"k": False}],
            "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "kept": "as is",
        }
    )
    assert converted == {
        "flag": "true",
        "absent": "",
        "count": "4",
        "raw": "AP8=",
        "text": "plain",
        "nested": '[1,"x",{"k":false}]',
        "at": "2024-01-01T00:00:00+00:00",
        "kept": "as is",
    }
