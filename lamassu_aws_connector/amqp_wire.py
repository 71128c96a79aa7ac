"""Reading and writing AMQP frames with less work per message than aiormq and pamqp do.

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

Writing: every publish is three frames marshalled by pamqp's generic encoder (a type lookup per
field and property, every header through its table encoder): ≈ 11 % of the reply relay's CPU in
the profile. :func:`encode_frames` writes ``basic.publish``, ``basic.ack``, content headers and
bodies directly, byte for byte as pamqp does (tests/test_amqp_wire.py compares them on generated
frames); any other frame, and any header value that is not a string, is left to pamqp.

Both take aiormq's place through the names aiormq looks up when it opens a connection and when it
marshals frames (:func:`install`); an aiormq that no longer works that way keeps its own.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import aiormq.abc
import aiormq.connection
import pamqp.encode
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
AiormqFrameReceiver = aiormq.connection.FrameReceiver  # aiormq's own, as imported (before install())


# Basic.Properties on the wire: in this order, each one present when its flag bit is set.
_SHORTSTR, _CLUSTER_ID, _TABLE, _OCTET, _TIMESTAMP = "shortstr", "cluster_id", "table", "octet", "timestamp"
_PROPERTY_LAYOUT = (
    ("content_type", 0x8000, _SHORTSTR),
    ("content_encoding", 0x4000, _SHORTSTR),
    ("headers", 0x2000, _TABLE),
    ("delivery_mode", 0x1000, _OCTET),
    ("priority", 0x0800, _OCTET),
    ("correlation_id", 0x0400, _SHORTSTR),
    ("reply_to", 0x0200, _SHORTSTR),
    ("expiration", 0x0100, _SHORTSTR),
    ("message_id", 0x0080, _SHORTSTR),
    ("timestamp", 0x0040, _TIMESTAMP),
    ("message_type", 0x0020, _SHORTSTR),
    ("user_id", 0x0010, _SHORTSTR),
    ("app_id", 0x0008, _SHORTSTR),
    ("cluster_id", 0x0004, _CLUSTER_ID),  # a shortstr that pamqp defaults to "" rather than None
)


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
    for name, flag, kind in _PROPERTY_LAYOUT:
        value: Any = "" if kind is _CLUSTER_ID else None  # as pamqp's Properties() starts
        if not flags & flag:
            pass
        elif kind is _SHORTSTR or kind is _CLUSTER_ID:
            value, at = _shortstr(payload, at)
        elif kind is _OCTET:
            value = payload[at]
            at += 1
        elif kind is _TABLE:
            used, value = decode.field_table(payload[at:-1])
            at += used
        else:
            if at + 8 > len(payload) - 1:
                raise _Overrun
            _, value = decode.timestamp(payload[at : at + 8])
            at += 8
        setattr(properties, name, value)
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


class LeanFrameReceiver(AiormqFrameReceiver):
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


_Publish = commands.Basic.Publish
_PUBLISH_METHOD = (60 << 16 | 40).to_bytes(4, "big")
_ACK_METHOD = _ACK.to_bytes(4, "big")
_FRAME_END_BYTE = b"\xce"
_EMPTY_TABLE = b"\x00\x00\x00\x00"


class _Unusual(Exception):
    """Something pamqp encodes (or refuses) its own way: the whole call goes to pamqp."""


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return b"".join((_FRAME_HEAD.pack(frame_type, channel, len(payload)), payload, _FRAME_END_BYTE))


def _short(value: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise _Unusual
    return bytes((len(encoded),)) + encoded


def _table(value: dict[str, Any]) -> bytes:
    if not value:
        return _EMPTY_TABLE
    parts: list[bytes] = []
    for key, item in sorted(value.items()):
        if type(item) is not str:
            return bytes(pamqp.encode.field_table(value))  # numbers, booleans, tables: pamqp's choices
        name = key.encode("utf-8")
        if len(name) > 128:  # pamqp truncates (and warns)
            raise _Unusual
        text = item.encode("utf-8")
        parts += (bytes((len(name),)), name, b"S", len(text).to_bytes(4, "big"), text)
    encoded = b"".join(parts)
    return len(encoded).to_bytes(4, "big") + encoded


def _properties(properties: _Properties) -> bytes:
    """Basic.Properties as pamqp marshals them: a property that is None or "" is left out."""
    flags = 0
    parts: list[bytes] = []
    for name, flag, kind in _PROPERTY_LAYOUT:
        value = getattr(properties, name)
        if value is None or value == "":
            continue
        flags |= flag
        if kind is _TABLE:
            if not isinstance(value, dict):
                raise _Unusual
            parts.append(_table(value))
        elif kind is _OCTET:
            if not isinstance(value, int) or not 0 <= value <= 255:  # an IntEnum (DeliveryMode) is fine
                raise _Unusual
            parts.append(bytes((value,)))
        elif kind is _TIMESTAMP:
            parts.append(pamqp.encode.timestamp(value))
        else:
            parts.append(_short(value))
    return flags.to_bytes(2, "big") + b"".join(parts)


def _encode(frame: Any, channel: int) -> bytes:
    kind = type(frame)
    if kind is _ContentBody:
        return _frame(_FRAME_BODY, channel, frame.value)
    if kind is _ContentHeader:
        head = _CONTENT_HEAD.pack(commands.Basic.frame_id, 0, frame.body_size, 0)[:-2]
        return _frame(_FRAME_HEADER, channel, head + _properties(frame.properties))
    if kind is _Publish:
        frame.validate()  # as pamqp's marshal does: the same error for a bad exchange name
        bits = bytes((0 | frame.mandatory << 0 | frame.immediate << 1,))  # pamqp's bit packing
        payload = _PUBLISH_METHOD + b"\x00\x00" + _short(frame.exchange) + _short(frame.routing_key) + bits
        return _frame(_FRAME_METHOD, channel, payload)
    if kind is _Ack:
        bits = bytes((0 | frame.multiple << 0,))
        return _frame(_FRAME_METHOD, channel, _ACK_METHOD + _LONGLONG.pack(frame.delivery_tag) + bits)
    raise _Unusual


def encode_frames(frames: list[Any], channel: int) -> bytes | None:
    """The frames marshalled as ``pamqp.frame.marshal`` marshals each, concatenated; None if one of
    them is not a publish, ack, content header or body, or is anything pamqp treats specially."""
    try:
        return b"".join([_encode(frame, channel) for frame in frames])
    except (_Unusual, AttributeError, TypeError, ValueError, OverflowError, struct.error):
        return None


# aiormq's own ChannelFrame.marshall (its function), kept by install() for the frames left to pamqp.
_aiormq_marshall: dict[str, Callable[..., aiormq.abc.ChannelFrame]] = {}


def pamqp_marshall(
    cls: type[aiormq.abc.ChannelFrame],
    channel_number: int,
    frames: Any,
    drain_future: asyncio.Future[Any] | None = None,
) -> aiormq.abc.ChannelFrame:
    """aiormq's ChannelFrame.marshall as it was before :func:`install`."""
    return _aiormq_marshall["function"](cls, channel_number, frames, drain_future)


def _lean_marshall(
    cls: type[aiormq.abc.ChannelFrame],
    channel_number: int,
    frames: Any,
    drain_future: asyncio.Future[Any] | None = None,
) -> aiormq.abc.ChannelFrame:
    frames = list(frames)
    payload = encode_frames(frames, channel_number)
    if payload is None:
        return pamqp_marshall(cls, channel_number, frames, drain_future)
    return cls(payload=payload, drain_future=drain_future, should_close=False)


def install() -> bool:
    """Have aiormq read frames with :class:`LeanFrameReceiver` and marshal them with
    :func:`encode_frames`; False (and aiormq left as it is) if this aiormq does not read frames
    through ``connection.FrameReceiver(reader).get_frame()`` and marshal them through the
    classmethod ``abc.ChannelFrame.marshall``."""
    receiver = getattr(aiormq.connection, "FrameReceiver", None)
    if receiver is LeanFrameReceiver:
        return True
    marshall = getattr(getattr(aiormq.abc, "ChannelFrame", None), "marshall", None)
    function = getattr(marshall, "__func__", None)
    if receiver is not AiormqFrameReceiver or not callable(getattr(receiver, "get_frame", None)):
        return False
    if not callable(function):
        return False
    _aiormq_marshall["function"] = function
    aiormq.connection.FrameReceiver = LeanFrameReceiver  # type: ignore[misc]
    aiormq.abc.ChannelFrame.marshall = classmethod(_lean_marshall)  # type: ignore[method-assign, assignment]
    return True
