"""Prometheus metrics, one registry per running service (tests run several in one process).

Per Prometheus conventions: every label set that can occur with a bounded label (dead-letter codes,
skip reasons, outcomes, retry policies) exists at 0 from the start, so an ``increase()`` alert sees
the first occurrence after a restart; no ``*_created`` series; the process collector
(``process_*``); event-type labels only for catalogue types, every other type as ``other``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

from .outcomes import ErrorCode

disable_created_metrics()  # type: ignore[no-untyped-call]

SKIP_REASONS = ("loop_guard", "type_not_forwarded", "audit_copy", "error_record")
API_OUTCOMES = ("replied", "cached", "timeout", "invalid", "unavailable", "rejected", "unauthorized", "conflict")
CORRELATION_OUTCOMES = ("matched", "orphan", "unsolicited")
RETRY_POLICIES = ("sqs_hold", "reply_publish", "poller", "reply_action")
# --- reply actions (actions.py) ---
# The outcomes each action can have: every pair exists at 0 from the start.
REPLY_ACTION_OUTCOMES = {
    "sign_registration_code": ("succeeded", "duplicate", "rejected", "failed", "deferred"),
    "revoke_certificate": ("succeeded", "already_revoked", "not_needed", "duplicate", "rejected", "failed", "deferred"),
}
LAMASSU_CA_OPERATIONS = ("get_ca", "get_cas_by_cn", "sign_certificate", "get_certificate", "update_certificate_status")
# The status label of a Lamassu CA request: the HTTP codes the actions tell apart, the other codes by
# class, or why no answer came.
LAMASSU_CA_STATUSES = (
    "2xx", "400", "401", "403", "404", "409", "429", "3xx", "4xx", "5xx", "timeout", "unreachable", "tls",
)  # fmt: skip
LAMASSU_CA_STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
# --- end reply actions ---
OTHER_TYPE = "other"  # the event_type label of every type the catalogue does not know


def counter_total(counter: Counter) -> float:
    """A counter's value summed over all its label sets."""
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "lamassu_connector_events_consumed", "AMQP deliveries taken from the events queue", registry=r
        )
        self.events_forwarded = Counter(
            "lamassu_connector_events_forwarded",
            "Events confirmed by SQS and acked, by type (catalogue types, else other)",
            ["event_type"],
            registry=r,
        )
        self.events_skipped = Counter(
            "lamassu_connector_events_skipped",
            "Events acked without forwarding",
            ["reason"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "lamassu_connector_events_dead_lettered",
            "Events published to the dead-letter queue",
            ["code"],
            registry=r,
        )
        self.events_repaired = Counter(
            "lamassu_connector_events_repaired", "Events forwarded with a repaired id", registry=r
        )
        self.sqs_calls = Counter(
            "lamassu_connector_sqs_calls",
            "SQS API calls; SendMessageBatchEntry / DeleteMessageBatchEntry count the entries of those batch "
            "calls, the denominator of their entry failures in lamassu_connector_sqs_errors_total",
            ["operation"],
            registry=r,
        )
        self.sqs_errors = Counter(
            "lamassu_connector_sqs_errors", "SQS API calls or entries that failed", ["operation", "code"], registry=r
        )
        self.sqs_entry_retries = Counter(
            "lamassu_connector_sqs_entry_retries", "Batch entries sent again after a failure", registry=r
        )
        self.batch_size = Histogram(
            "lamassu_connector_sqs_batch_entries",
            "Entries per SendMessageBatch call",
            buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
            registry=r,
        )
        self.in_flight = Gauge(
            "lamassu_connector_outbound_in_flight", "Deliveries received and not yet settled", registry=r
        )
        self.outbound_latency = Histogram(
            "lamassu_connector_outbound_latency_seconds",
            "AMQP receive to SQS confirmed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.replies_received = Counter(
            "lamassu_connector_replies_received", "Messages received from the SQS response queue", registry=r
        )
        self.replies_relayed = Counter(
            "lamassu_connector_replies_relayed", "Replies confirmed by RabbitMQ and deleted from SQS", registry=r
        )
        self.replies_dead_lettered = Counter(
            "lamassu_connector_replies_dead_lettered",
            "Replies published to the reply dead-letter queue",
            ["code"],
            registry=r,
        )
        self.replies_unroutable = Counter(
            "lamassu_connector_replies_unroutable",
            "Replies RabbitMQ returned as unroutable (kept in SQS)",
            registry=r,
        )
        self.inbound_latency = Histogram(
            "lamassu_connector_inbound_latency_seconds",
            "SQS receive to AMQP confirmed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events_invalid_data = Counter(
            "lamassu_connector_events_invalid_data",
            "Events of a known Lamassu type whose data fails its catalogue model (by validation.data mode)",
            ["event_type", "mode"],
            registry=r,
        )
        self.commands_tracked = Counter(
            "lamassu_connector_commands_tracked",
            "Commands confirmed by SQS and awaiting a reply",
            ["event_type"],
            registry=r,
        )
        self.commands_outstanding = Gauge(
            "lamassu_connector_commands_outstanding", "Commands awaiting a reply (bounded table)", registry=r
        )
        self.commands_expired = Counter(
            "lamassu_connector_commands_expired",
            "Commands that got no reply within correlation.timeout_seconds",
            ["event_type"],
            registry=r,
        )
        self.commands_evicted = Counter(
            "lamassu_connector_commands_evicted",
            "Commands dropped unanswered because the table was full (correlation.max_outstanding)",
            ["event_type"],
            registry=r,
        )
        self.replies_correlated = Counter(
            "lamassu_connector_replies_correlated",
            "Relayed replies by correlation outcome: matched, orphan (answers no outstanding command), unsolicited",
            ["outcome"],
            registry=r,
        )
        self.command_reply_latency = Histogram(
            "lamassu_connector_command_reply_latency_seconds",
            "SQS confirmed the command -> its reply received from SQS, by command type",
            ["event_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_commands = Counter(
            "lamassu_connector_api_commands",
            "POST /v1/commands and GET /v1/config requests by outcome: " + ", ".join(API_OUTCOMES),
            ["outcome"],
            registry=r,
        )
        self.build_info = Gauge(
            "lamassu_connector_build_info", "Always 1; the version is in the label", ["version"], registry=r
        )
        self.sqs_available = Gauge(
            "lamassu_connector_sqs_available", "1 while the last SQS call reached the endpoint", registry=r
        )
        self.amqp_connected = Gauge(
            "lamassu_connector_amqp_connected", "1 while the AMQP connection is open", registry=r
        )
        self.dependency_up = Gauge(
            "lamassu_connector_dependency_up",
            "1 while the last call to the dependency succeeded (sqs_command_queue, sqs_response_queue, s3)",
            ["dependency"],
            registry=r,
        )
        self.dependency_failures = Counter(
            "lamassu_connector_dependency_failures",
            "Times a dependency went down, by the error that took it down",
            ["dependency", "error"],
            registry=r,
        )
        self.retries = Counter(
            "lamassu_connector_retries",
            "Retries by policy (outcomes.py): a dependency or an item tried again after a failure",
            ["policy"],
            registry=r,
        )
        self.redelivery_suspects = Counter(
            "lamassu_connector_redelivery_suspects",
            "Deliveries that were being handled when the connector died (crash guard strikes)",
            registry=r,
        )
        self.fleet_announcements = Counter(
            "lamassu_connector_fleet_announcements",
            "Correlation announcements between replicas (fleet.py) by kind (command, reply) and outcome "
            "(sent, received, failed, dropped)",
            ["kind", "outcome"],
            registry=r,
        )
        self.lamassu_failures = Counter(
            "lamassu_connector_lamassu_failures",
            "Error records (<action>.error) of Lamassu's CA/KMS services, forwarded or not, by failed action",
            ["action"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "lamassu_connector_queue_depth",
            "Messages waiting, sampled every health.depth_seconds: the events queue and both dead-letter "
            "queues (side=amqp), the SQS command and response queues (side=sqs)",
            ["side", "queue"],
            registry=r,
        )
        self.queue_in_flight = Gauge(
            "lamassu_connector_queue_in_flight",
            "SQS messages received by a consumer and not yet deleted (ApproximateNumberOfMessagesNotVisible)",
            ["queue"],
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "lamassu_connector_outbound_in_flight_bytes",
            "Bytes of AMQP bodies received and not yet settled (amqp.max_in_flight_bytes)",
            registry=r,
        )
        # Claim-check (claimcheck.py): events whose data went to S3, and replies whose data came back.
        self.claim_checked = Counter(
            "lamassu_connector_claim_checked", "Events whose data was stored in S3 (dataref sent)", registry=r
        )
        self.claim_checked_bytes = Counter(
            "lamassu_connector_claim_checked_bytes", "Bytes of event data stored in S3", registry=r
        )
        self.replies_resolved = Counter(
            "lamassu_connector_replies_resolved", "Replies whose dataref was resolved from S3", registry=r
        )
        self.s3_errors = Counter(
            "lamassu_connector_s3_errors", "S3 calls that failed", ["operation", "code"], registry=r
        )
        # --- reply actions (actions.py) ---
        self.reply_actions = Counter(
            "lamassu_connector_reply_actions",
            "Reply actions by action (sign_registration_code, revoke_certificate) and outcome: succeeded, "
            "already_revoked, not_needed, duplicate (done before by this process), rejected and failed "
            "(dead-lettered as action_rejected / action_failed), deferred (Lamassu CA or SQS away: left in SQS)",
            ["action", "outcome"],
            registry=r,
        )
        self.lamassu_ca_requests = Counter(
            "lamassu_connector_lamassu_ca_requests",
            "Requests to the Lamassu CA API by operation and status (2xx, 400, 401, ..., 5xx; timeout, "
            "unreachable, tls when no answer came)",
            ["operation", "status"],
            registry=r,
        )
        self.lamassu_ca_latency = Histogram(
            "lamassu_connector_lamassu_ca_request_seconds",
            "Latency of Lamassu CA API requests by status class (2xx, 3xx, 4xx, 5xx, error)",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # --- end reply actions ---
        ProcessCollector(registry=r)
        self._preinitialise()

    def _preinitialise(self) -> None:
        for code in ErrorCode:
            self.events_dead_lettered.labels(code.value)
            self.replies_dead_lettered.labels(code.value)
        for reason in SKIP_REASONS:
            self.events_skipped.labels(reason)
        for outcome in API_OUTCOMES:
            self.api_commands.labels(outcome)
        for outcome in CORRELATION_OUTCOMES:
            self.replies_correlated.labels(outcome)
        for policy in RETRY_POLICIES:
            self.retries.labels(policy)
        self.events_forwarded.labels(OTHER_TYPE)
        for action, outcomes in REPLY_ACTION_OUTCOMES.items():  # reply actions (actions.py)
            for outcome in outcomes:
                self.reply_actions.labels(action, outcome)
        for operation in LAMASSU_CA_OPERATIONS:
            for status in LAMASSU_CA_STATUSES:
                self.lamassu_ca_requests.labels(operation, status)
        for status_class in LAMASSU_CA_STATUS_CLASSES:
            self.lamassu_ca_latency.labels(status_class)
