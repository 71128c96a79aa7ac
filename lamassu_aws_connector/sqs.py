"""Thin SQS adapter over aiobotocore: queue resolution, batch send, long poll, batch delete.

Every call goes out through ``sqs_wire`` (SQS's JSON protocol, signed here, without the full
client's per-call cost) unless ``sqs.fast_path`` is false. The aiobotocore client is built only when
something needs it: the fast path off, or no ``sqs.endpoint_url`` (botocore then resolves the
endpoint: region, FIPS, ``AWS_ENDPOINT_URL_SQS``). Building it loads and indexes botocore's service
data, ~0.1-0.2 s of CPU at every start.

It returns what SQS answered and raises what botocore raised; how a failure is classified is
decided in outcomes.py, what to do about it in the pipelines. Credentials come from the standard
botocore chain and are never logged.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .config import SqsConfig
from .metrics import Metrics
from .outcomes import aws_error_code as error_code
from .outcomes import is_unavailable
from .sqs_wire import WIRE_OPERATIONS, SqsJsonWire

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

_LEGACY_MAX_MESSAGE_BYTES = 262_144
_NOT_FOUND_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
# botocore retries throttling and 5xx a few times quickly; longer outages are the pipelines' retry
# loops, which never drop an entry.
_QUICK_RETRIES = 3


class QueueNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    url: str
    max_message_bytes: int
    fifo: bool


def message_attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    """Bytes SQS counts against the message size for these String attributes."""
    return sum(
        len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


class SqsGateway:
    def __init__(self, config: SqsConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._stack = AsyncExitStack()
        self._session: AioSession | None = None  # built when first needed: see sqs_wire.environment_credentials
        self._client: Any = None  # the full aiobotocore client, built when first needed
        self._wire: SqsJsonWire | None = None
        self.available = False  # the last call reached SQS (readiness)

    async def __aenter__(self) -> SqsGateway:
        endpoint = self._config.endpoint_url
        if not (self._config.fast_path and endpoint):
            endpoint = (await self._full_client()).meta.endpoint_url
        if self._config.fast_path:
            wire = SqsJsonWire(
                self.session,
                region=self._config.region,
                endpoint_url=endpoint,
                connect_timeout=self._config.connect_timeout_seconds,
                read_timeout=self._config.wait_time_seconds + 15,
                max_connections=64,
                attempts=1 + _QUICK_RETRIES,
            )
            await wire.start()
            self._stack.push_async_callback(wire.close)
            self._wire = wire
        return self

    def session(self) -> AioSession:
        if self._session is None:
            from aiobotocore.session import get_session  # noqa: PLC0415 - see environment_credentials

            self._session = get_session()
        return self._session

    async def _full_client(self) -> Any:
        if self._client is None:
            from aiobotocore.config import AioConfig  # noqa: PLC0415 - the fast path never needs it

            client_config = AioConfig(
                retries={"mode": "standard", "max_attempts": _QUICK_RETRIES},
                connect_timeout=self._config.connect_timeout_seconds,
                read_timeout=self._config.wait_time_seconds + 15,
                max_pool_connections=64,
                # Entries are built by the pipelines with known types; botocore re-checking every
                # attribute of every entry costs ~6 % of the connector's CPU. SQS still validates.
                parameter_validation=False,
            )
            self._client = await self._stack.enter_async_context(
                self.session().create_client(
                    "sqs",
                    region_name=self._config.region,
                    endpoint_url=self._config.endpoint_url,
                    config=client_config,
                )
            )
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _call(self, operation: str, expected: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any]:
        """One SQS call; ``expected``: error codes that are an answer, not an error (not counted)."""
        self._metrics.sqs_calls.labels(operation).inc()
        try:
            if self._wire is not None and operation in WIRE_OPERATIONS:
                result = await self._wire.call(operation, params)
            else:
                result = await getattr(await self._full_client(), _snake(operation))(**params)
        except Exception as exc:
            if error_code(exc) in expected:
                self._set_available(True)
                raise
            self._metrics.sqs_errors.labels(operation, error_code(exc)).inc()
            if is_unavailable(exc):
                self._set_available(False)
            raise
        self._set_available(True)
        return result

    def _set_available(self, available: bool) -> None:
        if available != self.available:
            self.available = available
            self._metrics.sqs_available.set(int(available))

    async def resolve(self, name: str, *, create: bool) -> QueueInfo:
        """Find a queue (creating it when allowed) and read its size limit and FIFO flag."""
        try:
            # With create, "no such queue" is the expected answer of a first start, not an error.
            expected = frozenset(_NOT_FOUND_CODES) if create else frozenset()
            url = (await self._call("GetQueueUrl", expected, QueueName=name))["QueueUrl"]
        except ClientError as exc:
            if error_code(exc) not in _NOT_FOUND_CODES:
                raise
            if not create:
                raise QueueNotFound(
                    f"SQS queue {name!r} does not exist (create it, or set sqs.create_queues: true)"
                ) from None
            attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
            url = (await self._call("CreateQueue", QueueName=name, Attributes=attributes))["QueueUrl"]
        attrs = (
            await self._call("GetQueueAttributes", QueueUrl=url, AttributeNames=["MaximumMessageSize", "FifoQueue"])
        ).get("Attributes", {})
        return QueueInfo(
            name=name,
            url=url,
            max_message_bytes=int(attrs.get("MaximumMessageSize", _LEGACY_MAX_MESSAGE_BYTES)),
            fifo=attrs.get("FifoQueue", "false").lower() == "true",
        )

    async def depth(self, queue: QueueInfo) -> tuple[int, int]:
        """(visible, in flight) messages of a queue, as SQS approximates them."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = (await self._call("GetQueueAttributes", QueueUrl=queue.url, AttributeNames=names)).get(
            "Attributes", {}
        )
        return int(attributes.get(names[0], 0)), int(attributes.get(names[1], 0))

    async def send_batch(self, queue: QueueInfo, entries: list[dict[str, Any]]) -> dict[str, Any]:
        self._metrics.batch_size.observe(len(entries))
        self._metrics.sqs_calls.labels("SendMessageBatchEntry").inc(len(entries))
        return await self._call("SendMessageBatch", QueueUrl=queue.url, Entries=entries)

    async def receive(self, queue: QueueInfo, *, wait_seconds: int, visibility_timeout: int) -> list[dict[str, Any]]:
        result = await self._call(
            "ReceiveMessage",
            QueueUrl=queue.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_timeout,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = result.get("Messages", [])
        return messages

    async def delete_batch(self, queue: QueueInfo, receipts: dict[str, str]) -> dict[str, Any]:
        """Delete by {entry id: receipt handle}; the answer lists Successful and Failed ids."""
        entries = [{"Id": key, "ReceiptHandle": handle} for key, handle in receipts.items()]
        self._metrics.sqs_calls.labels("DeleteMessageBatchEntry").inc(len(entries))
        return await self._call("DeleteMessageBatch", QueueUrl=queue.url, Entries=entries)

    async def change_visibility_batch(
        self, queue: QueueInfo, receipts: dict[str, str], visibility_seconds: int
    ) -> dict[str, Any]:
        entries = [
            {"Id": key, "ReceiptHandle": handle, "VisibilityTimeout": visibility_seconds}
            for key, handle in receipts.items()
        ]
        return await self._call("ChangeMessageVisibilityBatch", QueueUrl=queue.url, Entries=entries)


def _snake(operation: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in operation).lstrip("_")
