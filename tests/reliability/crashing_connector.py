"""The real connector, except that it dies whenever it handles an event carrying POISON_MARKER.

It dies by SIGKILL, as the kernel's OOM killer kills a process that a huge message pushed over its
memory limit: no exception, no cleanup, no ack. Scenario 12e runs it in place of
``python -m lamassu_aws_connector`` to prove that such a message does not crash-loop the connector.
Test code only: the connector itself has no such switch.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from lamassu_aws_connector import outbound
from lamassu_aws_connector.cli import main
from lamassu_aws_connector.events import ParsedEvent

POISON_MARKER = b"kill-the-connector-now"
_parse_amqp = outbound.parse_amqp


def _parse_or_die(
    body: bytes, content_type: str | None, headers: Mapping[str, Any] | None, **options: Any
) -> ParsedEvent:
    if POISON_MARKER in body:
        os.kill(os.getpid(), signal.SIGKILL)
    return _parse_amqp(body, content_type, headers, **options)


outbound.parse_amqp = _parse_or_die  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
