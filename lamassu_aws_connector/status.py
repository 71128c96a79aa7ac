"""``status`` and ``check-config --connect``: both sides of the connector at a glance, from outside it.

``status`` reads, with the daemon's configuration:

* RabbitMQ: the events queue (messages ready, consumers) and both dead-letter queues (depth, and
  the ``x-error-code`` of the first ``peek`` messages, looked at as ``dlq list`` does: taken with
  manual acks, held, and given back in place at the end);
* SQS: the command and response queues (``ApproximateNumberOfMessages`` and
  ``ApproximateNumberOfMessagesNotVisible``, the messages a consumer holds);
* with ``url``, a running connector's ``/readyz`` (its checks, and what is down) and the key
  counters of its ``/metrics``.

Every part is asked at the same time, each with a deadline, and a part that does not answer is
reported with the reason instead of hiding the others. :attr:`Status.problems` says what did not
answer (or is not ready); ``status`` exits non-zero when there is any.

``check-config --connect`` tries each dependency once, as the daemon would reach it: RabbitMQ
(connect and log in), both SQS queues (resolve, read their attributes) and the claim-check bucket
(``HeadBucket``) when one is configured. One line each; secrets masked.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from . import dlq
from .amqp import AmqpGateway
from .claimcheck import BucketMissing, ClaimCheck
from .config import Settings, mask_url
from .metrics import Metrics
from .sqs import QueueNotFound, SqsGateway

DEFAULT_WAIT_SECONDS = 10.0
DEFAULT_PEEK = 1000


@dataclass(slots=True)
class QueueStatus:
    name: str
    role: str
    exists: bool | None = True  # None: not looked at (its side did not answer)
    messages: int | None = None  # RabbitMQ: ready; SQS: ApproximateNumberOfMessages
    consumers: int | None = None  # RabbitMQ only
    in_flight: int | None = None  # SQS only: ApproximateNumberOfMessagesNotVisible
    by_code: dict[str, int] | None = None  # dead-letter queues: x-error-code of the messages peeked at
    peeked: int | None = None
    oldest_age_seconds: float | None = None
    url: str | None = None
    error: str | None = None


@dataclass(slots=True)
class SideStatus:
    name: str
    endpoint: str
    reachable: bool = False
    server: str = ""
    error: str | None = None
    queues: list[QueueStatus] = field(default_factory=list)


@dataclass(slots=True)
class ConnectorStatus:
    url: str
    reachable: bool = False
    ready: bool | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(slots=True)
class Status:
    rabbitmq: SideStatus
    sqs: SideStatus
    connector: ConnectorStatus | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        for side, label in ((self.rabbitmq, "RabbitMQ"), (self.sqs, "SQS")):
            if side.error is not None:
                found.append(f"{label} ({side.endpoint}): {side.error}")
                continue
            for queue in side.queues:
                if not queue.exists:
                    found.append(f"{label} {queue.role} {queue.name!r} does not exist")
                elif queue.error is not None:
                    found.append(f"{label} {queue.role} {queue.name!r}: {queue.error}")
        connector = self.connector
        if connector is not None:
            if connector.error is not None:
                found.append(f"connector at {connector.url}: {connector.error}")
            elif connector.ready is False:
                found.append(f"connector at {connector.url} is not ready: down: {', '.join(connector.down) or '?'}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": not self.problems, "problems": self.problems}


async def endpoint_problem(url: str | None, wait_seconds: float) -> str | None:
    """Why nothing accepts connections at an explicit endpoint (LocalStack, a VPC endpoint), or None
    (``Connection refused``, ...).

    One TCP connect, so a closed port is named at once instead of after botocore's retries; AWS's own
    endpoints (``url`` None) are left to botocore."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # the client will say what is wrong with it
    return await dlq.tcp_problem(host, port, wait_seconds)


# ------------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------------


async def collect(
    settings: Settings,
    *,
    url: str | None = None,
    peek: int = DEFAULT_PEEK,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> Status:
    """Ask RabbitMQ, SQS and (with ``url``) the connector at once; never raises for what does not answer."""
    rabbitmq, sqs, connector = await asyncio.gather(
        _rabbitmq(settings, peek, wait_seconds),
        _sqs(settings, wait_seconds),
        read_connector(url, wait_seconds) if url else _nothing(),
    )
    return Status(rabbitmq, sqs, connector)


async def _nothing() -> None:
    return None


async def _rabbitmq(settings: Settings, peek: int, wait_seconds: float) -> SideStatus:
    amqp = settings.amqp
    side = SideStatus("rabbitmq", mask_url(amqp.url))
    try:
        side.server = await dlq.probe_amqp(settings, wait_seconds)
        async with dlq.amqp_session(settings, wait_seconds, probe=False) as gateway:
            side.reachable = True
            depths = await asyncio.wait_for(gateway.queue_depths([amqp.queue]), wait_seconds)
            events = QueueStatus(amqp.queue, "events queue", exists=amqp.queue in depths)
            if events.exists:
                events.messages, events.consumers = depths[amqp.queue]
            side.queues.append(events)
            for name, role in (
                (amqp.dead_letter_queue, "event dead letters"),
                (amqp.reply_dead_letter_queue, "reply dead letters"),
            ):
                side.queues.append(
                    await _dead_letters(gateway, settings, name, role, peek=peek, wait_seconds=wait_seconds)
                )
    except Exception as exc:
        side.error = str(exc) if isinstance(exc, dlq.ToolError) else dlq.masked_error(settings, exc)
        _unknown(
            side,
            [
                (amqp.queue, "events queue"),
                (amqp.dead_letter_queue, "event dead letters"),
                (amqp.reply_dead_letter_queue, "reply dead letters"),
            ],
        )
    return side


def _unknown(side: SideStatus, expected: list[tuple[str, str]]) -> None:
    """A side that could not be read still names every queue it should hold, with no depth."""
    for queue in side.queues:
        if queue.exists and queue.messages is None and queue.error is None:
            queue.error = "depth not read: the side stopped answering"
    looked_at = {queue.name for queue in side.queues}
    for name, role in expected:
        if name not in looked_at:
            side.queues.append(QueueStatus(name, role, exists=None, error="not looked at: unreachable"))


async def _dead_letters(
    gateway: AmqpGateway, settings: Settings, name: str, role: str, *, peek: int, wait_seconds: float
) -> QueueStatus:
    queue = QueueStatus(name, role)
    try:
        # Peeking holds messages in memory until they are given back: bounded by peek, and by time.
        found = await asyncio.wait_for(dlq.census(gateway, settings, name, peek), max(wait_seconds, 30.0))
    except dlq.ToolError:
        queue.exists = False
        return queue
    except TimeoutError:
        queue.error = "peeking took too long (try --peek 0 for the depth alone)"
        return queue
    except Exception as exc:
        queue.error = dlq.masked_error(settings, exc)
        return queue
    queue.messages, queue.peeked, queue.by_code = found.depth, found.peeked, found.by_code
    queue.oldest_age_seconds = found.oldest_age_seconds
    return queue


async def _sqs(settings: Settings, wait_seconds: float) -> SideStatus:
    config = settings.sqs
    side = SideStatus("sqs", config.endpoint_url or f"AWS SQS {config.region}")
    expected = [(config.command_queue, "command queue"), (config.response_queue, "response queue")]
    side.error = await endpoint_problem(config.endpoint_url, wait_seconds)
    if side.error is not None:
        _unknown(side, expected)
        return side
    try:
        async with SqsGateway(config, Metrics()) as gateway:
            for name, role in expected:
                # Listed only once SQS has answered about it, so that a failed look-up leaves it "not looked at".
                queue = QueueStatus(name, role)
                try:
                    info = await asyncio.wait_for(gateway.resolve(name, create=False), wait_seconds)
                except QueueNotFound:
                    side.reachable = True
                    queue.exists = False
                    side.queues.append(queue)
                    continue
                side.queues.append(queue)
                side.reachable, side.server = True, f"answers (region {config.region})"
                queue.url = info.url
                queue.messages, queue.in_flight = await asyncio.wait_for(gateway.depth(info), wait_seconds)
    except TimeoutError:
        side.error = f"no answer within {wait_seconds:.0f} s"
    except Exception as exc:
        side.error = _aws_error(exc)
    if side.error is not None:
        _unknown(side, expected)
    return side


def _aws_error(exc: BaseException) -> str:
    text = " ".join((str(exc) or type(exc).__name__).split())
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


async def read_connector(url: str, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> ConnectorStatus:
    """A running connector's /readyz and the key counters of its /metrics; never raises."""
    base = url if "://" in url else f"http://{url}"
    base = base.rstrip("/")
    status = ConnectorStatus(base)
    status.error = await endpoint_problem(base, wait_seconds)
    if status.error is not None:
        return status
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_seconds)) as session:
            async with session.get(f"{base}/readyz") as response:
                body = await response.text()
                status.reachable = True
                if response.status not in (200, 503):
                    status.error = f"/readyz answered HTTP {response.status}"
                    return status
                try:
                    readiness = json.loads(body)
                except ValueError:
                    status.error = "/readyz did not answer JSON: is this the connector's http.port?"
                    return status
            status.ready = response.status == 200
            status.checks = {str(k): bool(v) for k, v in (readiness.get("checks") or {}).items()}
            status.down = [str(name) for name in readiness.get("down") or []]
            async with session.get(f"{base}/metrics") as response:
                if response.status != 200:
                    status.error = f"/metrics answered HTTP {response.status}"
                    return status
                status.metrics = summarize_metrics(await response.text())
    except TimeoutError:
        status.error = f"no answer within {wait_seconds:.0f} s"
    except aiohttp.ClientError as exc:
        status.error = f"{type(exc).__name__}: {exc}"
    except ValueError as exc:  # not Prometheus text
        status.error = f"/metrics is not Prometheus text: {exc}"
    return status


def summarize_metrics(text: str) -> dict[str, Any]:
    """The counters an operator looks at first, from the Prometheus text of ``/metrics``."""
    samples: list[tuple[str, dict[str, str], float]] = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]

    def total(name: str) -> int | None:
        values = [value for sample, _, value in samples if sample == name]
        return int(sum(values)) if values else None

    def by(name: str, label: str, keep_zero: bool = False) -> dict[str, int]:
        found: dict[str, int] = {}
        for sample, labels, value in samples:
            if sample == name and label in labels:
                found[labels[label]] = found.get(labels[label], 0) + int(value)
        return {key: found[key] for key in sorted(found) if keep_zero or found[key]}

    prefix = "lamassu_connector_"
    summary: dict[str, Any] = {
        "events_consumed": total(f"{prefix}events_consumed_total"),
        "events_forwarded": total(f"{prefix}events_forwarded_total"),
        "events_skipped": by(f"{prefix}events_skipped_total", "reason"),
        "events_dead_lettered": by(f"{prefix}events_dead_lettered_total", "code"),
        "replies_received": total(f"{prefix}replies_received_total"),
        "replies_relayed": total(f"{prefix}replies_relayed_total"),
        "replies_dead_lettered": by(f"{prefix}replies_dead_lettered_total", "code"),
        "outbound_in_flight": total(f"{prefix}outbound_in_flight"),
        "amqp_connected": total(f"{prefix}amqp_connected"),
        "sqs_available": total(f"{prefix}sqs_available"),
        "dependency_up": by(f"{prefix}dependency_up", "dependency", keep_zero=True),
    }
    return {key: value for key, value in summary.items() if value is not None}


def render(status: Status) -> str:
    """The operator's view: one line per side, one per queue (named, with its depth), then the connector."""
    lines: list[str] = []
    for side, label in ((status.rabbitmq, "RabbitMQ"), (status.sqs, "SQS")):
        if side.error is not None:
            lines.append(f"{label} {side.endpoint}: UNREACHABLE: {side.error}")
        else:
            lines.append(f"{label} {side.endpoint}: {side.server or 'answers'}")
        width = max((len(queue.name) for queue in side.queues), default=0)
        for queue in side.queues:
            lines.append(f"  {queue.name:<{width}}  {queue.role:<18}  {_queue_line(queue)}")
    connector = status.connector
    if connector is not None:
        lines.extend(_connector_lines(connector))
    return "\n".join(lines) + "\n"


def _queue_line(queue: QueueStatus) -> str:
    if queue.error is not None:
        return f"ERROR: {queue.error}"
    if not queue.exists:
        return "DOES NOT EXIST"
    if queue.in_flight is not None:
        return f"{queue.messages} visible, {queue.in_flight} in flight"
    if queue.consumers is not None:
        note = "  (no consumer: is the connector running?)" if queue.consumers == 0 else ""
        return f"{queue.messages} ready, {queue.consumers} consumer(s){note}"
    text = f"{queue.messages}"
    if queue.by_code:
        codes = ", ".join(f"{code} {count}" for code, count in queue.by_code.items())
        first = (
            f" of the first {queue.peeked}" if queue.peeked is not None and queue.peeked < (queue.messages or 0) else ""
        )
        oldest = f"; oldest {dlq.format_age(queue.oldest_age_seconds)}" if queue.oldest_age_seconds is not None else ""
        text += f"  ({codes}{first}{oldest})"
    return text


def _connector_lines(connector: ConnectorStatus) -> list[str]:
    if connector.error is not None and not connector.checks:
        return [f"connector {connector.url}: UNREACHABLE: {connector.error}"]
    state = "ready" if connector.ready else f"NOT READY (down: {', '.join(connector.down) or '?'})"
    lines = [f"connector {connector.url}: {state}"]
    if connector.checks:
        lines.append(
            "  checks   " + ", ".join(f"{name} {'ok' if ok else 'DOWN'}" for name, ok in connector.checks.items())
        )
    m = connector.metrics
    if m:
        lines.append(
            f"  events   consumed {m.get('events_consumed', '?')}, forwarded {m.get('events_forwarded', '?')}, "
            f"skipped {sum(m.get('events_skipped', {}).values())}, "
            f"dead-lettered {_by_code(m.get('events_dead_lettered', {}))}"
        )
        lines.append(
            f"  replies  received {m.get('replies_received', '?')}, relayed {m.get('replies_relayed', '?')}, "
            f"dead-lettered {_by_code(m.get('replies_dead_lettered', {}))}"
        )
        if m.get("dependency_up"):
            lines.append("  dependency_up  " + ", ".join(f"{k} {v}" for k, v in m["dependency_up"].items()))
    if connector.error is not None:
        lines.append(f"  ERROR: {connector.error}")
    return lines


def _by_code(codes: dict[str, int]) -> str:
    count = sum(codes.values())
    return f"{count} ({', '.join(f'{code} {n}' for code, n in codes.items())})" if count else "0"


# ------------------------------------------------------------------------------------------------
# check-config --connect
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'error'}: {self.detail}"


async def check_connections(settings: Settings, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> list[Check]:
    """Try each dependency once, at the same time; one :class:`Check` each, in a fixed order."""
    rabbitmq, sqs, s3, lamassu_ca = await asyncio.gather(
        _check_rabbitmq(settings, wait_seconds),
        _check_sqs(settings, wait_seconds),
        _check_s3(settings, wait_seconds),
        _check_lamassu_ca(settings, wait_seconds),
    )
    return [rabbitmq, *sqs, s3, *lamassu_ca]


async def _check_lamassu_ca(settings: Settings, wait_seconds: float) -> list[Check]:
    """With reply actions on: one read-only request to the Lamassu CA, through its TLS and token."""
    config = settings.actions.lamassu_ca
    if not settings.actions.enabled or config.url is None:
        return []
    from .actions import PROBE_COMMON_NAME, LamassuCaClient, LamassuError  # noqa: PLC0415 - only with actions
    from .health import DependencyHealth  # noqa: PLC0415

    name = f"lamassu ca {config.url}"
    metrics = Metrics()
    try:
        async with LamassuCaClient(config, metrics, DependencyHealth(metrics, ("lamassu_ca",))) as client:
            # A CA by a common name nobody uses: an empty list (or 404) proves TLS, token and route.
            await asyncio.wait_for(client.cas_by_common_name(PROBE_COMMON_NAME), wait_seconds)
    except LamassuError as exc:
        if exc.http_status == 404 and exc.status == "404":
            return [Check(name, True, "answered 404 for an unknown CA common name (TLS and token accepted)")]
        return [Check(name, False, str(exc))]
    except TimeoutError:
        return [Check(name, False, f"no answer within {wait_seconds:.0f} s")]
    except Exception as exc:  # unusable TLS files, a bad URL
        return [Check(name, False, f"{type(exc).__name__}: {exc}")]
    auth = ", ".join(
        part
        for part, used in (
            ("client certificate", bool(config.tls.cert_file)),
            ("bearer token", config.bearer_token is not None or bool(config.bearer_token_file)),
        )
        if used
    )
    return [Check(name, True, f"answered (GET /v1/cas/cn/...; {auth or 'no credentials'} accepted)")]


async def _check_rabbitmq(settings: Settings, wait_seconds: float) -> Check:
    try:
        server = await dlq.probe_amqp(settings, wait_seconds)
    except dlq.ToolError as exc:
        return Check("rabbitmq", False, str(exc))
    except Exception as exc:
        return Check("rabbitmq", False, dlq.masked_error(settings, exc))
    return Check("rabbitmq", True, f"{mask_url(settings.amqp.url)} ({server}, login accepted)")


async def _check_sqs(settings: Settings, wait_seconds: float) -> list[Check]:
    config = settings.sqs
    roles = (("sqs command queue", config.command_queue), ("sqs response queue", config.response_queue))
    checks: list[Check] = []
    problem = await endpoint_problem(config.endpoint_url, wait_seconds)
    if problem is not None:
        return [
            Check(f"{role} {name}", False, f"cannot connect to {config.endpoint_url}: {problem}")
            for role, name in roles
        ]
    try:
        async with SqsGateway(config, Metrics()) as gateway:
            for role, name in roles:
                try:
                    info = await asyncio.wait_for(gateway.resolve(name, create=False), wait_seconds)
                except QueueNotFound as exc:
                    if config.create_queues:
                        checks.append(
                            Check(
                                f"{role} {name}", True, "does not exist yet; created at start (sqs.create_queues: true)"
                            )
                        )
                    else:
                        checks.append(Check(f"{role} {name}", False, str(exc)))
                    continue
                except TimeoutError:
                    checks.append(Check(f"{role} {name}", False, f"no answer within {wait_seconds:.0f} s"))
                    continue
                except Exception as exc:
                    checks.append(Check(f"{role} {name}", False, _aws_error(exc)))
                    continue
                kind = "FIFO" if info.fifo else "standard"
                checks.append(
                    Check(f"{role} {name}", True, f"{info.url} ({kind}, at most {info.max_message_bytes} bytes)")
                )
    except Exception as exc:  # the client itself (e.g. no region, a bad endpoint)
        done = {check.name.rsplit(" ", 1)[0] for check in checks}
        checks += [Check(f"{role} {name}", False, _aws_error(exc)) for role, name in roles if role not in done]
    return checks


async def _check_s3(settings: Settings, wait_seconds: float) -> Check:
    bucket = settings.claim_check.bucket
    if not bucket:
        return Check("s3 claim-check bucket", True, "not configured (claim_check.bucket is empty): nothing to check")
    name = f"s3 claim-check bucket {bucket}"
    endpoint = settings.claim_check.endpoint_url or settings.sqs.endpoint_url
    problem = await endpoint_problem(endpoint, wait_seconds)
    if problem is not None:
        return Check(name, False, f"cannot connect to {endpoint}: {problem}")
    try:
        async with ClaimCheck(settings.claim_check, settings.sqs, Metrics()) as store:
            await asyncio.wait_for(store.check_bucket(create=False), wait_seconds)
    except BucketMissing as exc:
        return Check(name, False, str(exc))
    except TimeoutError:
        return Check(name, False, f"no answer within {wait_seconds:.0f} s")
    except Exception as exc:
        return Check(name, False, _aws_error(exc))
    return Check(name, True, "exists (HeadBucket; a 403 is accepted: least privilege has no s3:ListBucket)")
