"""Scenario 8: poison and malformed input mixed into a stream of 2,000 good events.

Every kind of bad input the parser knows, a message larger than the SQS limit and random bytes:
each must be dead-lettered exactly once with its code, the good ones all forwarded, and nothing
redelivered in a loop (the events queue ends empty, one dead-letter log line per bad message).
"""

from __future__ import annotations

import random
import string
from typing import Any

import orjson
import pytest

from .driver import Env, outbound_scenario

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

GOOD = 2000
FIRST_BAD = 1_000_000


def _event(seq: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"bad-{seq}",
        "source": "lamassuiot/ca",
        "type": "io.lamassuiot.certificate.update",
        "time": "2026-11-26T09:00:00Z",
        "data": {"seq": seq},
    }
    base.update(changes)
    return base


def _bad_kinds(seq: int) -> list[tuple[str, bytes, dict[str, Any], str]]:
    """(kind, body, AMQP headers, expected x-error-code) for every kind of bad input."""
    rng = random.Random(seq)
    dump = orjson.dumps
    binary = {"ce-specversion": "1.0", "ce-id": f"bad-{seq}", "ce-source": "lamassuiot/ca"}
    return [
        ("truncated JSON", b'{"specversion": "1.0", "id": ', {}, "invalid_json"),
        ("empty body", b"", {}, "invalid_json"),
        ("byte order mark", b"\xef\xbb\xbf" + dump(_event(seq)), {}, "invalid_json"),
        ("random printable text", "".join(rng.choices(string.printable, k=300)).encode(), {}, "invalid_json"),
        ("random bytes", rng.randbytes(512), {}, "invalid_utf8"),
        ("Latin-1 body", '{"id":"caf\xe9"}'.encode("latin-1"), {}, "invalid_utf8"),
        ("lone surrogate", b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"t"}', {}, "invalid_utf8"),
        ("JSON array", b"[1,2,3]", {}, "not_cloudevent"),
        ("JSON object, not an event", b'{"hello":"world"}', {}, "not_cloudevent"),
        ("specversion 0.3", dump(_event(seq, specversion="0.3")), {}, "invalid_attribute"),
        ("time not RFC 3339", dump(_event(seq, time="yesterday")), {}, "invalid_attribute"),
        ("upper-case extension", dump(_event(seq, BadExt="x")), {}, "invalid_attribute"),
        ("data and data_base64", dump(_event(seq, data_base64="aGk=")), {}, "invalid_attribute"),
        ("binary mode without type", b"hi", binary, "invalid_attribute"),
        ("binary mode, header not UTF-8", b"hi", {**binary, "ce-type": bytearray(b"\xff\xfe")}, "invalid_attribute"),
        ("binary mode, table header", b"hi", {**binary, "ce-type": "t", "ce-x": {"a": 1}}, "invalid_attribute"),
        ("U+FFFF in the body", dump(_event(seq, data={"seq": seq, "note": "\uffff"})), {}, "sqs_rejected"),
        ("1.1 MiB event", dump(_event(seq, data={"seq": seq, "blob": "x" * 1_150_000})), {}, "too_large"),
    ]


async def test_8_poison_and_malformed_input_mixed_in(env: Env) -> None:
    kinds = _bad_kinds(0)
    copies = 3
    bad: dict[int, tuple[bytes, dict[str, Any]]] = {}
    expected: dict[int, tuple[str, str]] = {}
    for copy in range(copies):
        for index, (kind, body, headers, code) in enumerate(_bad_kinds(copy)):
            seq = FIRST_BAD + copy * len(kinds) + index
            bad[seq] = (body, headers)
            expected[seq] = (kind, code)

    figures, run = await outbound_scenario(
        env, "08-bad-input", f"{len(bad)} bad messages ({len(kinds)} kinds) mixed into the stream", None, bad=bad
    )
    assert run.dead_letters is not None
    assert figures.lost == 0
    assert figures.arrived == GOOD
    # Each bad message dead-lettered exactly once, with the code of its kind; no good one.
    assert dict(run.dead_letters.seen) == dict.fromkeys(bad, 1)
    for seq, message in run.dead_letters.messages.items():
        kind, code = expected[seq]
        assert message.headers["x-error-code"] == code, kind
        assert message.headers["x-error-message"], kind
    assert figures.dead_lettered == len(bad)
    # No redelivery loop: one dead-letter decision per bad message across the whole run.
    [connector] = run.connectors
    assert len(connector.log_events("outbound.dead_lettered")) == len(bad)
    figures.notes["kinds"] = sorted({f"{kind} -> {code}" for kind, code in expected.values()})
    figures.save()
