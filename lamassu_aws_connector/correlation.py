"""Command -> reply correlation: which reply in ``lamassu-response`` answers which command sent to ``lamassu-command``.

Every outbound event carries a correlation id (its ``correlationid`` extension, else its id) as the
SQS attribute ``ce-correlationid``. Commands of tracked types wait in a bounded table, oldest first,
until a reply names them or they expire. A reply names its command by the ``correlationid`` or
``causationid`` extension, else by the v1 convention: the v1 Lambdas echo the request id as the
reply id.

Outcomes are metrics and log lines: matched (with the command->reply latency by command type),
orphan (a reply that claims to answer something - it carries a correlation extension or is a known
answer type - with no outstanding command: it came late, or after a restart), unsolicited (an AWS
notification that answers nothing), expired and evicted commands. The table is in memory: it
measures, it never blocks or drops an event.

Replicas act as one (fleet.py): every replica announces the tracked commands SQS confirmed on a
fanout exchange, and keeps every replica's outstanding commands; a reply to a command another
replica sent is announced to the fleet so its owner gets it. Each outcome is counted once across
the fleet: matched, expired, evicted and tracked by the replica that sent the command (its
*owner*), orphan and unsolicited by the replica that relayed the reply; summing a metric over the
replicas gives the fleet's figure. A ``POST /v1/commands`` caller is answered by its replica
whichever replica received the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .catalogue import ANSWER_TYPES, REPLY_EXPECTED, is_known
from .config import CorrelationConfig
from .events import CloudEvent
from .logs import get_logger
from .metrics import Metrics

log = get_logger(__name__)

MATCHED, ORPHAN, UNSOLICITED = "matched", "orphan", "unsolicited"
PARKED = "parked"  # in a fleet: no replica claims it yet; orphan unless a command announcement names it soon

# How long a reply that no replica claims waits, in a fleet, for the announcement of its command: a
# Lambda can answer (and another replica poll the answer) before the sender's announcement arrives.
FLEET_GRACE_SECONDS = 5.0


def correlation_id(event: CloudEvent) -> str:
    """The event's ``correlationid`` extension, else its id: what replies should quote."""
    value = event.extension("correlationid")
    return str(value) if value not in (None, "") else event.id


@dataclass(slots=True)
class Outstanding:
    key: str
    event_id: str
    event_type: str
    sent_at: float
    owned: bool = True  # sent by this replica (counted here), else announced by another one


@dataclass(slots=True)
class Parked:
    reply: CloudEvent
    fields: dict[str, Any]
    keys: tuple[str, ...]  # the ids it claims and its own id
    parked_at: float


# What a replica announces to the others (fleet.py): (kind, payload).
Announce = Callable[[str, dict[str, Any]], None]


class CorrelationTable:
    """Outstanding commands, at most ``max_outstanding``, each for at most ``timeout_seconds``."""

    def __init__(
        self, config: CorrelationConfig, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._tracks = _matcher(config.command_types)
        # Metric labels: catalogue types and command types configured by name; anything else is
        # "other", so no caller or publisher can grow the label series without bound.
        self._named = frozenset(t for t in config.command_types or () if not any(c in t for c in "*?["))
        if config.enabled:  # the series exist at 0 from the start, so "expired == 0" is an answer, not a gap
            labels = self._named if config.command_types is not None else REPLY_EXPECTED
            if config.command_types is not None and len(self._named) < len(config.command_types):
                labels = labels | {"other"}
            for label in labels:
                for counter in (metrics.commands_tracked, metrics.commands_expired, metrics.commands_evicted):
                    counter.labels(label)
        # Insertion order is send order, so the oldest entry is always first: expiry is O(expired).
        self._pending: OrderedDict[str, Outstanding] = OrderedDict()
        self._aliases: dict[str, str] = {}  # command id -> key, when the key is a correlationid
        self._sweeper: asyncio.Task[None] | None = None
        # POST /v1/commands callers waiting for a reply, by correlation id and by command id.
        self._waiters: dict[str, asyncio.Future[CloudEvent]] = {}
        self._announce: Announce | None = None  # set when replicas share outcomes (fleet.py)
        self._owned = 0  # entries this replica sent: the commands_outstanding gauge (sums over replicas)
        # Replies relayed here that no replica claimed yet, oldest first (fleet only), and their keys.
        self._parked: OrderedDict[int, Parked] = OrderedDict()
        self._parked_keys: dict[str, int] = {}
        self._parked_seq = 0

    def join_fleet(self, announce: Announce) -> None:
        """From now on commands and replies are announced to every replica, and replies are
        processed when their announcement comes back (``on_reply_announced``), here as everywhere."""
        self._announce = announce

    def __len__(self) -> int:
        return len(self._pending)

    def tracks(self, event_type: str) -> bool:
        return self._config.enabled and self._tracks(event_type)

    def label(self, event_type: str) -> str:
        return event_type if event_type in self._named or is_known(event_type) else "other"

    def awaited(self, event: CloudEvent) -> bool:
        """A ``POST /v1/commands`` caller already waits for a reply with this event's correlation id or id."""
        return any(key in self._waiters for key in (correlation_id(event), event.id))

    def outstanding(self, event: CloudEvent) -> bool:
        """A caller waits for a reply with this event's correlation id or id, or a command sent with it
        (by the API, from the bus, or by another replica) still awaits its reply: a second command
        under that id could be answered with the first one's reply."""
        if self.awaited(event):
            return True
        self.expire(self._clock())
        return any(key in self._pending or key in self._aliases for key in (correlation_id(event), event.id))

    def command_sent(self, event: CloudEvent, *, track: bool = False) -> None:
        """SQS confirmed a command: remember it until its reply (a redelivered copy keeps the first time).

        ``track``: whatever its type (the commands API waits for every command it sends).
        """
        if not (self.tracks(event.type) or (track and self._config.enabled)):
            return
        key = correlation_id(event)
        if self._remember(key, event.id, event.type, owned=True) and self._announce is not None:
            self._announce("command", {"key": key, "event_id": event.id, "event_type": event.type})
            self._unpark(key, event.id)

    def owned_commands(self) -> list[tuple[str, str, str]]:
        """The commands this replica sent that still await their reply: (key, id, type), oldest first,
        for a replica that joins the fleet (it missed their announcements)."""
        self.expire(self._clock())
        return [(c.key, c.event_id, c.event_type) for c in self._pending.values() if c.owned]

    def on_command_announced(self, key: str, event_id: str, event_type: str) -> None:
        """Another replica sent a tracked command: keep it, so its reply is no orphan here."""
        if self._config.enabled and self._remember(key, event_id, event_type, owned=False):
            self._unpark(key, event_id)

    def _remember(self, key: str, event_id: str, event_type: str, *, owned: bool) -> bool:
        now = self._clock()
        self.expire(now)
        if key in self._pending:
            return False
        while len(self._pending) >= self._config.max_outstanding:
            oldest = self._pop_oldest()
            if not oldest.owned:
                continue
            self._metrics.commands_evicted.labels(self.label(oldest.event_type)).inc()
            log.warning(
                "correlation.command_evicted",
                event_id=oldest.event_id,
                event_type=oldest.event_type,
                correlation_id=oldest.key,
                waited_seconds=round(now - oldest.sent_at, 3),
                reason=f"more than correlation.max_outstanding={self._config.max_outstanding} commands await a reply",
            )
        self._pending[key] = Outstanding(key, event_id, event_type, now, owned)
        if key != event_id:
            self._aliases[event_id] = key
        if owned:
            self._owned += 1
            self._metrics.commands_tracked.labels(self.label(event_type)).inc()
            self._metrics.commands_outstanding.set(self._owned)
        return True

    def reply_received(self, reply: CloudEvent, fields: dict[str, Any]) -> str:
        """A reply was relayed here: match it to its command; returns matched, orphan or unsolicited.

        In a fleet, a reply to a command another replica sent is announced to the fleet instead
        (its owner counts it and answers its caller) and "announced" is returned; every other reply
        is settled here, without a message: most replies cost the fleet nothing.
        """
        if self._announce is not None and self._config.enabled:
            key = self._lookup(reply)
            if key is not None and not self._pending[key].owned:
                self._hand_over(key, reply, fields)
                return "announced"
        return self._match(reply, fields, relayed_here=True)

    def _hand_over(self, key: str, reply: CloudEvent, fields: dict[str, Any]) -> None:
        """A reply relayed here answers another replica's command: announce it, its owner counts it."""
        assert self._announce is not None
        self._remove(key)
        self._announce("reply", {"reply": reply, "queue": fields.get("queue", "")})

    def _lookup(self, reply: CloudEvent) -> str | None:
        """The outstanding command a reply names: by correlationid, causationid, else its own id (v1)."""
        for candidate in [*_claimed(reply), reply.id]:
            key = candidate if candidate in self._pending else self._aliases.get(candidate)
            if key is not None:
                return key
        return None

    def on_reply_announced(self, reply: CloudEvent, fields: dict[str, Any], *, relayed_here: bool) -> str:
        return self._match(reply, fields, relayed_here=relayed_here)

    def _match(self, reply: CloudEvent, fields: dict[str, Any], *, relayed_here: bool) -> str:
        candidates = _claimed(reply)
        if self._waiters:
            self._wake([*candidates, reply.id], reply)
        if not self._config.enabled:
            return UNSOLICITED
        now = self._clock()
        self.expire(now)
        key = self._lookup(reply)
        if key is not None:
            command = self._remove(key)
            if not command.owned:
                return "answered_elsewhere"  # its owner counts it
            latency = now - command.sent_at
            self._metrics.command_reply_latency.labels(self.label(command.event_type)).observe(latency)
            self._metrics.replies_correlated.labels(MATCHED).inc()
            log.debug(  # one per reply, as inbound.relayed; the summary line counts them
                "correlation.matched",
                **fields,
                command_id=command.event_id,
                command_type=command.event_type,
                correlation_id=command.key,
                latency_seconds=round(latency, 3),
            )
            return MATCHED
        if not relayed_here:
            return "relayed_elsewhere"  # the relaying replica counts what answers nothing
        if candidates or reply.type in ANSWER_TYPES:
            if self._announce is not None:
                self._park(Parked(reply, fields, (*candidates, reply.id), now))
                return PARKED
            self._count_orphan(reply, fields)
            return ORPHAN
        self._metrics.replies_correlated.labels(UNSOLICITED).inc()
        return UNSOLICITED

    def _count_orphan(self, reply: CloudEvent, fields: dict[str, Any]) -> None:
        candidates = _claimed(reply)
        self._metrics.replies_correlated.labels(ORPHAN).inc()
        log.warning(
            "correlation.orphan_reply",
            **fields,
            correlation_id=candidates[0] if candidates else reply.id,
            reason="no outstanding command matches, on any replica (late, or sent before a restart)",
        )

    def _park(self, parked: Parked) -> None:
        while len(self._parked) >= self._config.max_outstanding:
            self._settle_oldest_parked()
        self._parked_seq += 1
        self._parked[self._parked_seq] = parked
        for key in parked.keys:
            self._parked_keys.setdefault(key, self._parked_seq)

    def _settle_oldest_parked(self) -> None:
        _, parked = self._parked.popitem(last=False)
        self._unindex(parked)
        self._count_orphan(parked.reply, parked.fields)

    def _unindex(self, parked: Parked) -> None:
        for key in parked.keys:
            seq = self._parked_keys.get(key)
            if seq is not None and self._parked.get(seq) is None:
                del self._parked_keys[key]

    def _unpark(self, key: str, event_id: str) -> None:
        """A command just became known here: a parked reply that names it is settled as if it came now."""
        if not self._parked_keys:
            return
        seq = self._parked_keys.get(key, self._parked_keys.get(event_id))
        parked = self._parked.pop(seq) if seq is not None else None
        if parked is None:
            return
        self._unindex(parked)
        if self._pending[key].owned:
            self._match(parked.reply, parked.fields, relayed_here=True)
        else:
            self._hand_over(key, parked.reply, parked.fields)

    def expire(self, now: float | None = None) -> int:
        """Drop the commands older than the timeout, counting and logging each; returns how many."""
        now = self._clock() if now is None else now
        while self._parked and next(iter(self._parked.values())).parked_at <= now - FLEET_GRACE_SECONDS:
            self._settle_oldest_parked()
        cutoff = now - self._config.timeout_seconds
        expired = 0
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.sent_at > cutoff:
                break
            self._pop_oldest()
            if not oldest.owned:
                continue  # its owner counts it
            expired += 1
            self._metrics.commands_expired.labels(self.label(oldest.event_type)).inc()
            log.warning(
                "correlation.command_expired",
                event_id=oldest.event_id,
                event_type=oldest.event_type,
                correlation_id=oldest.key,
                timeout_seconds=self._config.timeout_seconds,
                reason="no reply arrived in time",
            )
        return expired

    def wait_for_reply(self, event: CloudEvent) -> asyncio.Future[CloudEvent]:
        """A future for the reply to ``event`` (register it before sending: the reply may be quick)."""
        future: asyncio.Future[CloudEvent] = asyncio.get_running_loop().create_future()
        for key in {correlation_id(event), event.id}:
            self._waiters[key] = future
        return future

    def stop_waiting(self, event: CloudEvent) -> None:
        for key in {correlation_id(event), event.id}:
            self._waiters.pop(key, None)

    def _wake(self, keys: list[str], reply: CloudEvent) -> None:
        for key in keys:
            future = self._waiters.pop(key, None)
            if future is not None and not future.done():
                future.set_result(reply)

    def start(self) -> None:
        """Sweep expired commands in the background too, so an idle connector still reports them."""
        if self._config.enabled and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="correlation-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        interval = min(max(self._config.timeout_seconds / 4, 0.05), FLEET_GRACE_SECONDS / 2)
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def _pop_oldest(self) -> Outstanding:
        _, command = self._pending.popitem(last=False)
        self._forget(command)
        return command

    def _remove(self, key: str) -> Outstanding:
        command = self._pending.pop(key)
        self._forget(command)
        return command

    def _forget(self, command: Outstanding) -> None:
        self._aliases.pop(command.event_id, None)
        if command.owned:
            self._owned -= 1
            self._metrics.commands_outstanding.set(self._owned)


def _claimed(reply: CloudEvent) -> list[str]:
    """The command ids a reply claims to answer, through its correlation extensions."""
    values = [reply.extension(name) for name in ("correlationid", "causationid")]
    return [str(value) for value in values if value not in (None, "")]


def _matcher(patterns: list[str] | None) -> Callable[[str], bool]:
    if patterns is None:
        return REPLY_EXPECTED.__contains__
    if "*" in patterns:
        return lambda _type: True
    if not patterns:
        return lambda _type: False
    regex = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))
    return lambda event_type: regex.match(event_type) is not None
