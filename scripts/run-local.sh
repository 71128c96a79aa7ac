#!/usr/bin/env bash
# Run the connector locally: venv, RabbitMQ + LocalStack on 127.0.0.1 (queues are created by the
# connector, create_queues: true in config.example.yaml), then the daemon in the foreground.
# Ctrl-C stops it gracefully. Another config: scripts/run-local.sh --config my.yaml
# It prints how to send an example event (examples/events/) and watch it arrive with `status`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
scripts/services.sh up
eval "$(scripts/services.sh env)"
export LAMASSU_AMQP__URL=${LAMASSU_AMQP__URL:-$AMQP_URL}
export LAMASSU_SQS__ENDPOINT_URL=${LAMASSU_SQS__ENDPOINT_URL:-$SQS_ENDPOINT_URL}
if [[ $# -eq 0 ]]; then
  set -- --config config.example.yaml
fi
cat >&2 <<HINT
run-local: starting the connector ($*); Ctrl-C stops it. To watch it work, in another shell here:
  eval "\$(scripts/services.sh env)"   # the endpoints and LocalStack's dummy AWS credentials
  .venv/bin/lamassu-aws-connector send $* examples/events/certificate.status.update.json
  .venv/bin/lamassu-aws-connector status $* --url http://127.0.0.1:8080
HINT
exec .venv/bin/lamassu-aws-connector run "$@"
