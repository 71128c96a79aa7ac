#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, RabbitMQ + SQS server on 127.0.0.1, lint, types,
# unit and integration tests. Extra arguments go to pytest (e.g. scripts/test.sh -k outbound).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
# Bytecode for the connector, as its image ships it: the tests start it as a process dozens of times,
# and with PYTHONDONTWRITEBYTECODE set each start would compile its ~10,000 lines again (~0.25 s CPU).
.venv/bin/python -m compileall -q lamassu_aws_connector >/dev/null
scripts/services.sh up
eval "$(scripts/services.sh env)"
export LAMASSU_TEST_AMQP_URL=$AMQP_URL LAMASSU_TEST_SQS_ENDPOINT=$SQS_ENDPOINT_URL

.venv/bin/ruff check lamassu_aws_connector tests bench
.venv/bin/ruff format --check lamassu_aws_connector tests bench
.venv/bin/mypy
scripts/check-lowest-deps.sh  # the lowest allowed runtime dependencies still work (no services needed)
.venv/bin/pytest -p no:cacheprovider "$@"
