"""Reading AMQP frames off the socket with less work per delivery than aiormq's own reader.

aiormq reads every frame in three awaits under an ``asyncio.Lock`` into a ``BytesIO``, then pamqp
decodes it generically (a type lookup per field, a validated object built and then overwritten).
A consumed message is three frames (``basic.deliver``, content header, body), and this reading
was ≈ 20 % of the connector's CPU per event in the profile (≈ 22 µs per delivery, against ≈ 8
µs here, in a bare read loop on this project's machine).

:class:`LeanFrameReceiver` reads a frame in two awaits and decodes the frames of the hot paths
(``basic.deliver``, ``basic.ack``/``basic.nack`` for publisher confirms, content headers, bodies)
directly into the same pamqp objects; every other frame, and every frame a fast decoder does not
finish cleanly inside its bounds, goes to pamqp, so what pamqp would reject is rejected the same
way. tests/test_amqp_wire.py checks the equivalence on generated and corrupted frames.

It takes aiormq's place through the one name aiormq looks up when it opens a connection
(:func:`install`); an aiormq that no longer reads frames that way simply keeps its own reader.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import body, commands, decode, header
from pamqp.exceptions import PAMQPException

_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY = 1, 2, 3
_FRAME_END = 0xCE
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_CONTENT_HEAD = struct.Struct(">HHQH")  # class id, weight, body size, first property flags
_LONGLONG = struct.Struct(">q")  # signed, as pamqp decodes it

_Deliver = commands.Basic.Deliver
_Ack = commands.Basic.Ack
_Nack = commands.Basic.Nack
_Properties = commands.Basic.Properties
_ContentHeader = header.ContentHeader
_ContentBody = body.ContentBody

# (class id << 16 | method id) of the methods decoded here
_DELIVER = 60 << 16 | 60
_ACK = 60 << 16 | 80
_NACK = 60 << 16 | 120

Frame = tuple[int, int, Any]


class _Overrun(Exception):
    """A field ran past the frame's payload: pamqp decides what that frame is (or that it is bad)."""


def _shortstr(payload: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + payload[at]
    return payload[at + 1 : end].decode("utf-8"), end


def _deliver(payload: bytes) -> _Deliver:
    frame = _Deliver.__new__(_Deliver)  # as pamqp's decoder, which overwrites every field
    frame.consumer_tag, at = _shortstr(payload, 4)
    (frame.delivery_tag,) = _LONGLONG.unpack_from(payload, at)
    frame.redelivered = bool(payload[at + 8] & 1)
    frame.exchange, at = _shortstr(payload, at + 9)
    frame.routing_key, at = _shortstr(payload, at)
    if at > len(payload) - 1:
        raise _Overrun
    return frame


def _confirm(payload: bytes, method: type[_Ack] | type[_Nack]) -> _Ack | _Nack:
    if len(payload) - 1 < 13:
        raise _Overrun
    frame = method.__new__(method)
    (frame.delivery_tag,) = _LONGLONG.unpack_from(payload, 4)
    flags = payload[12]
    frame.multiple = bool(flags & 1)
    if isinstance(frame, _Nack):
        frame.requeue = bool(flags & 2)
    return frame


def _content_header(payload: bytes) -> _ContentHeader | None:
    class_id, weight, body_size, flags = _CONTENT_HEAD.unpack_from(payload)
    if flags & 1:  # a second flag word: never sent for basic, left to pamqp
        return None
    properties = _Properties.__new__(_Properties)
    at = 14
    properties.content_type = properties.content_encoding = properties.headers = None
    properties.delivery_mode = properties.priority = properties.correlation_id = None
    properties.reply_to = properties.expiration = properties.message_id = None
    properties.timestamp = properties.message_type = properties.user_id = properties.app_id = None
    properties.cluster_id = ""
    if flags & 0x8000:
        properties.content_type, at = _shortstr(payload, at)
    if flags & 0x4000:
        properties.content_encoding, at = _shortstr(payload, at)
    if flags & 0x2000:
        used, properties.headers = decode.field_table(payload[at:-1])
        at += used
    if flags & 0x1000:
        properties.delivery_mode = payload[at]
        at += 1
    if flags & 0x0800:
        properties.priority = payload[at]
        at += 1
    if flags & 0x0400:
        properties.correlation_id, at = _shortstr(payload, at)
    if flags & 0x0200:
        properties.reply_to, at = _shortstr(payload, at)
    if flags & 0x0100:
        properties.expiration, at = _shortstr(payload, at)
    if flags & 0x0080:
        properties.message_id, at = _shortstr(payload, at)
    if flags & 0x0040:
        if at + 8 > len(payload) - 1:
            raise _Overrun
        _, properties.timestamp = decode.timestamp(payload[at : at + 8])
        at += 8
    if flags & 0x0020:
        properties.message_type, at = _shortstr(payload, at)
    if flags & 0x0010:
        properties.user_id, at = _shortstr(payload, at)
    if flags & 0x0008:
        properties.app_id, at = _shortstr(payload, at)
    if flags & 0x0004:
        properties.cluster_id, at = _shortstr(payload, at)
    if at > len(payload) - 1:
        raise _Overrun
    frame = _ContentHeader.__new__(_ContentHeader)
    frame.class_id, frame.weight, frame.body_size, frame.properties = class_id, weight, body_size, properties
    return frame


def decode_frame(head: bytes, payload: bytes) -> Frame:
    """(bytes consumed, channel, frame) of one frame: ``head`` its 7 bytes, ``payload`` the rest
    with the frame-end octet, as pamqp's ``frame.unmarshal(head + payload)`` returns it."""
    frame_type, channel, size = _FRAME_HEAD.unpack(head)
    if size and len(payload) == size + 1 and payload[size] == _FRAME_END:
        try:
            if frame_type == _FRAME_BODY:
                content = _ContentBody.__new__(_ContentBody)
                content.value = payload[:size]
                return size + 8, channel, content
            if frame_type == _FRAME_METHOD and size >= 4:
                method = int.from_bytes(payload[:4], "big")
                if method == _DELIVER:
                    return size + 8, channel, _deliver(payload)
                if method == _ACK:
                    return size + 8, channel, _confirm(payload, _Ack)
                if method == _NACK:
                    return size + 8, channel, _confirm(payload, _Nack)
            elif frame_type == _FRAME_HEADER and size >= 14 and payload[0:2] == b"\x00\x3c":
                decoded = _content_header(payload)
                if decoded is not None:
                    return size + 8, channel, decoded
        except (_Overrun, IndexError, ValueError, struct.error, PAMQPException):
            pass  # pamqp's verdict below: the same frame object, or the same error
    return pamqp.frame.unmarshal(head + payload)


class LeanFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's frame receiver, reading a frame in two awaits and decoding it with :func:`decode_frame`.

    Errors are aiormq's own: a socket that closes mid-frame or fails is ``AMQPConnectionError``, a
    frame that does not decode ``InvalidFrameError``, a server answering with a protocol header
    ``ProtocolSyntaxError``."""

    async def get_frame(self) -> Frame:
        reader = self.reader
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        try:
            head = await reader.readexactly(7)
            if not self.started:
                if head.startswith(b"AMQP"):
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                self.started = True
            payload = await reader.readexactly(int.from_bytes(head[3:7], "big") + 1)
        except asyncio.IncompleteReadError as e:
            raise AMQPConnectionError(
                f"Server connection unexpectedly closed. Read {len(e.partial)} bytes but {e.expected} bytes expected"
            ) from e
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        try:
            return decode_frame(head, payload)
        except PAMQPException as e:
            raise InvalidFrameError(str(e)) from e


def install() -> bool:
    """Have aiormq open its connections with :class:`LeanFrameReceiver`; False if this aiormq does
    not read frames through ``connection.FrameReceiver(reader).get_frame()``."""
    receiver = getattr(aiormq.connection, "FrameReceiver", None)
    if receiver is LeanFrameReceiver:
        return True
    if receiver is not LeanFrameReceiver.__mro__[1] or not callable(getattr(receiver, "get_frame", None)):
        return False
    aiormq.connection.FrameReceiver = LeanFrameReceiver  # type: ignore[misc]
    return True
