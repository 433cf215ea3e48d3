#!/usr/bin/env bash
# The registry's Kafka ACLs, for an existing cluster (the local stack applies the same table
# itself: shared/kafka_acls.py, whose unit test checks this script grants exactly that table).
#
#   KAFKA_ACLS=/opt/kafka/bin/kafka-acls.sh \
#   BOOTSTRAP=kafka-0.kafka:9093 COMMAND_CONFIG=admin.properties \
#   PREFIX="" infra/kafka-acls.sh [--dry-run]
#
# COMMAND_CONFIG is a client config of a principal allowed to ALTER the cluster's ACLs, e.g.
#   security.protocol=SASL_SSL
#   sasl.mechanism=SCRAM-SHA-512
#   sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="...";
#   ssl.truststore.type=PEM
#   ssl.truststore.location=/etc/kafka/ca.pem
# PREFIX is the deployment's MODELREG_TOPIC_PREFIX (topics and groups are named with it).
# The principals are User:<name> for each service (ingest, validation, promotion, archival,
# audit, api, webhooks) and each outside role (pipeline, qa, ops, reader); create their SCRAM
# credentials first, e.g.
#   kafka-configs.sh --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" \
#     --alter --entity-type users --entity-name ingest --add-config 'SCRAM-SHA-512=[password=...]'
# (or with Strimzi, the KafkaUser resources of infra/k8s/kafka-users.yaml).
# --dry-run prints the commands instead of running them.
set -euo pipefail

KAFKA_ACLS=${KAFKA_ACLS:-kafka-acls.sh}
BOOTSTRAP=${BOOTSTRAP:?set BOOTSTRAP to the cluster bootstrap servers}
COMMAND_CONFIG=${COMMAND_CONFIG:?set COMMAND_CONFIG to an admin client config file}
PREFIX=${PREFIX:-}
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1

ALL_TOPICS="model.registered model.ingested model.validated model.rejected qa.requested
metrics.evaluated promotion.requested model.promoted model.demoted model.archived
model.restored registry.audit registry.dlq"

# allow PRINCIPAL OPERATION TOPIC... : one call for all the topics.
allow() {
  local principal=$1 operation=$2
  shift 2
  [[ $# -eq 0 ]] && return 0
  local args=(--bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" --add
              --allow-principal "User:$principal" --operation "$operation")
  for t in "$@"; do args+=(--topic "$PREFIX$t"); done
  run "${args[@]}"
}

# group PRINCIPAL NAME [--resource-pattern-type prefixed]: READ on a consumer group.
group() {
  group_operation READ "$@"
}

# group_operation OPERATION PRINCIPAL NAME [--resource-pattern-type prefixed]
group_operation() {
  local operation=$1 principal=$2 name=$3
  shift 3
  run --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" --add \
      --allow-principal "User:$principal" --operation "$operation" --group "$PREFIX$name" "$@"
}

run() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "$KAFKA_ACLS $*"
  else
    "$KAFKA_ACLS" "$@"
  fi
}

# principal | reads | writes (besides registry.audit and registry.dlq for every service)
service() {
  local name=$1 reads=$2 writes=$3
  # shellcheck disable=SC2086 # word splitting of the topic lists is intended
  allow "$name" DESCRIBE $ALL_TOPICS
  # shellcheck disable=SC2086
  allow "$name" READ $reads
  # shellcheck disable=SC2086
  allow "$name" WRITE $writes registry.audit registry.dlq
  [[ -n "$reads" ]] && group "$name" "modelreg-$name"
  # The outbox relay publishes in Kafka transactions under the service's transactional id.
  for operation in WRITE DESCRIBE; do
    run --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" --add \
        --allow-principal "User:$name" --operation "$operation" --transactional-id "${PREFIX}modelreg-outbox-$name"
  done
  return 0
}

service ingest     "model.registered" "model.ingested model.rejected"
service validation "model.ingested" "model.validated model.rejected qa.requested"
service promotion  "model.ingested model.validated model.rejected metrics.evaluated promotion.requested model.archived model.restored" \
                   "model.promoted model.demoted model.rejected"
service archival   "model.ingested model.promoted model.demoted model.rejected promotion.requested" \
                   "model.archived model.restored"
# The audit writer reads the dead letters and redrives them: it republishes a refused record's
# original bytes to the topic it came from, so it may write every topic a service consumes
# (a redriven event keeps its original signature: consumers still check who signed it). The
# webhooks service consumes every topic, so that is every topic.
REDRIVE="$ALL_TOPICS"
service audit      "registry.audit registry.dlq" "$REDRIVE"
# The API publishes what people ask for over HTTP: registrations, evaluations, promotion requests.
service api        "" "model.registered metrics.evaluated promotion.requested"
# Webhooks deliver any event type an endpoint asks for: they read every topic, write only their audit.
service webhooks   "$ALL_TOPICS" ""

# Outside roles: each writes its one topic; QA reads its requests; the reader reads everything.
# Their consumer groups are named <role>-anything.
for role in pipeline qa ops reader; do
  # shellcheck disable=SC2086
  allow "$role" DESCRIBE $ALL_TOPICS
done
allow pipeline WRITE model.registered
allow qa WRITE metrics.evaluated
allow qa READ qa.requested
group qa "qa-" --resource-pattern-type prefixed
allow ops WRITE promotion.requested
# shellcheck disable=SC2086
allow reader READ $ALL_TOPICS
group reader "reader-" --resource-pattern-type prefixed
# `modelreg replay` holds audit_log to the audit writer's committed offsets: it reads them.
group_operation DESCRIBE reader modelreg-audit
