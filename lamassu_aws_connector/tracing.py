"""Optional OpenTelemetry spans for the two hops: consume -> SQS send, and SQS receive -> RabbitMQ publish.

Only when ``opentelemetry-api`` is importable; configure it the standard way (an SDK and the
``OTEL_*`` environment variables, e.g. ``opentelemetry-instrument``). Without it, or without an SDK
tracer provider, :func:`record` is a single check. Each span is a child of the W3C context the message carries
(``traceparent``/``tracestate``), so it lands in the Lamassu trace; the context forwarded to the
other side stays the one Lamassu (or the Lambda) sent, so AWS and Lamassu spans keep their own
parent links. Spans are recorded after the hop settled, with its real start time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the usual case: no OpenTelemetry, no cost
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

PRODUCER, CONSUMER = "producer", "consumer"


def enabled() -> bool:
    """Spans are worth building only when an SDK tracer provider was installed.

    Without one the API hands out non-recording spans, which would still cost a context extraction
    and a span object per message; callers check this before building a span's arguments.
    """
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def record(
    name: str,
    kind: str,
    carrier: Mapping[str, str],
    started_monotonic: float,
    attributes: Mapping[str, Any],
) -> None:
    """One finished span named ``name``, parented to the W3C context in ``carrier`` when there is one."""
    if not enabled():
        return
    elapsed_ns = int((time.monotonic() - started_monotonic) * 1e9)
    end_ns = time.time_ns()
    context = propagate.extract(dict(carrier)) if carrier else None
    span_kind = trace.SpanKind.PRODUCER if kind == PRODUCER else trace.SpanKind.CONSUMER
    tracer = trace.get_tracer("lamassu_aws_connector")
    span = tracer.start_span(
        name,
        context=context,
        kind=span_kind,
        start_time=end_ns - elapsed_ns,
        attributes={key: value for key, value in attributes.items() if value is not None},
    )
    span.end(end_time=end_ns)
