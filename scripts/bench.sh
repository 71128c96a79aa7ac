#!/usr/bin/env bash
# The benchmark (not a test): venv, RabbitMQ + LocalStack on 127.0.0.1, then bench/run.py.
# Arguments go to bench/run.py, e.g. scripts/bench.sh --quick, or
# scripts/bench.sh --markdown docs/performance.md   (≈ 20 min; rewrites the table in that file)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/services.sh up >&2
eval "$(scripts/services.sh env)"
export AMQP_URL SQS_ENDPOINT_URL
exec .venv/bin/python bench/run.py "$@"
