#!/usr/bin/env bash
# Runs the reliability scenarios (tests/reliability) on real services and writes their counted
# figures to docs/reliability.md. --long adds the 100,000-event backlog and the 10-minute soak
# (about 20 minutes in all); without it, about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
if [[ "${1:-}" == "--long" ]]; then long=1; fi

scripts/bootstrap.sh
scripts/services.sh up
eval "$(scripts/services.sh env)"
export LAMASSU_TEST_AMQP_URL=$AMQP_URL LAMASSU_TEST_SQS_ENDPOINT=$SQS_ENDPOINT_URL

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
status=0
LAMASSU_RELIABILITY_RESULTS=$results LAMASSU_LONG_TESTS=$long \
    .venv/bin/pytest -p no:cacheprovider -m reliability tests/reliability --junitxml "$results/junit.xml" || status=$?
.venv/bin/python -m tests.reliability.report "$results" --command "scripts/reliability-report.sh${1:+ $1}" \
    > docs/reliability.md
echo "wrote docs/reliability.md (pytest exit status $status)"
exit "$status"
