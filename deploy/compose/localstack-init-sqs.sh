#!/bin/bash
# LocalStack READY hook (mounted into /etc/localstack/init/ready.d/ by docker-compose.yml): creates
# the connector's SQS queues the way deploy/cloudformation/queues.yaml does in AWS - each with a
# dead-letter queue and a redrive policy, 1 MiB maximum message size - so the connector runs with
# sqs.create_queues: false, as in production; and, when LAMASSU_CLAIM_CHECK_BUCKET is set, the S3
# bucket of the claim-check. Idempotent: creating an existing queue with the same attributes
# returns it, and an existing bucket is kept.
#
# Environment (all optional): LAMASSU_COMMAND_QUEUE (default lamassu-command; a .fifo name makes
# FIFO queues), LAMASSU_RESPONSE_QUEUE (default lamassu-response), COMMAND_MAX_RECEIVE_COUNT (5),
# RESPONSE_MAX_RECEIVE_COUNT (10), LAMASSU_CLAIM_CHECK_BUCKET (default: none), AWS_CLI (default
# awslocal; e.g. "aws --endpoint-url URL" to run it against another endpoint).
set -euo pipefail

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
read -r -a aws <<<"${AWS_CLI:-awslocal}"

command_queue=${LAMASSU_COMMAND_QUEUE:-lamassu-command}
response_queue=${LAMASSU_RESPONSE_QUEUE:-lamassu-response}

# create_queue NAME [ATTRIBUTES-JSON-MEMBERS]: prints the queue URL.
create_queue() {
  local name=$1 extra=${2:-} fifo=""
  [[ $name == *.fifo ]] && fifo='"FifoQueue":"true","ContentBasedDeduplication":"false",'
  "${aws[@]}" sqs create-queue --queue-name "$name" \
    --attributes "{${fifo}\"MaximumMessageSize\":\"1048576\"${extra}}" \
    --query QueueUrl --output text
}

# with_dead_letter_queue NAME MAX_RECEIVE_COUNT: NAME-dlq (NAME-dlq.fifo), then NAME redriving to it.
with_dead_letter_queue() {
  local name=$1 max=$2 base dlq dlq_url dlq_arn redrive url
  base=${name%.fifo}
  dlq=$base-dlq
  [[ $name == *.fifo ]] && dlq=$dlq.fifo
  dlq_url=$(create_queue "$dlq" ',"MessageRetentionPeriod":"1209600"')
  dlq_arn=$("${aws[@]}" sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
    --query Attributes.QueueArn --output text)
  redrive=$(printf '{\\"deadLetterTargetArn\\":\\"%s\\",\\"maxReceiveCount\\":\\"%s\\"}' "$dlq_arn" "$max")
  url=$(create_queue "$name" ",\"RedrivePolicy\":\"$redrive\"")
  echo "lamassu-aws-connector init: $url (dead letters: $dlq_url)"
}

with_dead_letter_queue "$command_queue" "${COMMAND_MAX_RECEIVE_COUNT:-5}"
with_dead_letter_queue "$response_queue" "${RESPONSE_MAX_RECEIVE_COUNT:-10}"

# The claim-check bucket (claim_check.bucket), in us-east-1 (no LocationConstraint there).
bucket=${LAMASSU_CLAIM_CHECK_BUCKET:-}
if [[ -n $bucket ]]; then
  if ! "${aws[@]}" s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
    "${aws[@]}" s3api create-bucket --bucket "$bucket" >/dev/null
  fi
  echo "lamassu-aws-connector init: s3://$bucket (claim-check)"
fi
