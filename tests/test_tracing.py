"""OpenTelemetry spans for both hops, parented to the W3C context Lamassu sent (real RabbitMQ and SQS)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lamassu_aws_connector import tracing

from . import samples
from .conftest import World, running, wait_for
from .test_correlation import W3C_TRACESTATE, event, fake_lambda, v1_config_reply
from .test_inbound import bind_observer

TRACE_ID = int(samples.W3C_TRACEPARENT.split("-")[1], 16)
PARENT_SPAN_ID = int(samples.W3C_TRACEPARENT.split("-")[2], 16)


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_a_span_without_trace_context_starts_its_own_trace(spans: InMemorySpanExporter) -> None:
    spans.clear()
    tracing.record("q send", tracing.PRODUCER, {}, 0.0, {"cloudevents.event_id": "e1", "absent": None})
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert span.kind == trace.SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {"cloudevents.event_id": "e1"}


@pytest.mark.integration
async def test_both_hops_emit_spans_in_lamassus_trace(world: World, spans: InMemorySpanExporter) -> None:
    assert tracing.enabled()
    spans.clear()
    observer = await bind_observer(world, "#")
    command = event("io.lamassu.iotcore.config.request")
    seen: list[dict[str, Any]] = []
    async with running(world.settings()):
        lambda_task = asyncio.create_task(fake_lambda(world, {command["type"]: v1_config_reply}, seen))
        try:
            headers = {"traceparent": samples.W3C_TRACEPARENT, "tracestate": W3C_TRACESTATE}
            await world.publish(samples.body(command), exchange="", content_type="text/json", headers=headers)
            await world.take_amqp(observer.name, 1)
            await wait_for(lambda: len(spans.get_finished_spans()) == 2, what="two spans")
        finally:
            lambda_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lambda_task
    by_kind = {span.kind: span for span in spans.get_finished_spans()}
    send, receive = by_kind[trace.SpanKind.PRODUCER], by_kind[trace.SpanKind.CONSUMER]
    assert send.name == f"{world.command_queue} send"
    assert receive.name == f"{world.response_queue} receive"
    for span in (send, receive):
        assert span.parent is not None
        assert span.parent.trace_id == TRACE_ID and span.parent.span_id == PARENT_SPAN_ID
        assert span.context.trace_id == TRACE_ID
        assert span.parent.trace_state.to_header() == W3C_TRACESTATE
        assert (span.attributes or {})["cloudevents.event_id"] == command["id"]
        assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time
