#!/usr/bin/env bash
# One-shot `elasticsearch-init` service of the `elk` profile (runs in the Elasticsearch image, for its curl):
# waits for Elasticsearch, then — idempotently, on every start —
#   - sets the password of `kibana_system`, the user Kibana connects as (KIBANA_SYSTEM_PASSWORD);
#   - creates the role `rune_writer` (write to rune-* only, read cluster health) and the user `rune_vector`
#     with it, whom Vector indexes as (VECTOR_ES_PASSWORD);
#   - installs the index template `rune` for rune-* (rune-template.json beside this file = docs/results.md).
# Passwords come from deploy/secrets/elk.env; `elastic` (ELASTIC_PASSWORD) is used only here.
set -euo pipefail

: "${ELASTIC_PASSWORD:?missing: write deploy/secrets/elk.env (deploy/secrets/README.md)}"
: "${KIBANA_SYSTEM_PASSWORD:?missing: write deploy/secrets/elk.env (deploy/secrets/README.md)}"
: "${VECTOR_ES_PASSWORD:?missing: write deploy/secrets/elk.env (deploy/secrets/README.md)}"

es=${ELASTICSEARCH_URL:-http://elasticsearch:9200}
here=$(dirname "$0")

# curl with the superuser's credentials from a config on stdin, so that the password is not on a command line.
es_curl() {
  printf 'user = "elastic:%s"\n' "$ELASTIC_PASSWORD" |
    curl --config - --silent --show-error --fail-with-body -H 'Content-Type: application/json' "$@"
  echo
}

echo "elasticsearch-init: waiting for $es"
until es_curl "$es/_cluster/health?wait_for_status=yellow&timeout=10s" >/dev/null 2>&1; do
  sleep 5
done

echo "elasticsearch-init: password of kibana_system"
es_curl -X POST "$es/_security/user/kibana_system/_password" \
  --data "{\"password\": \"$KIBANA_SYSTEM_PASSWORD\"}"

echo "elasticsearch-init: role rune_writer, user rune_vector"
es_curl -X PUT "$es/_security/role/rune_writer" --data '{
  "cluster": ["monitor"],
  "indices": [{ "names": ["rune-*"], "privileges": ["create_index", "index", "view_index_metadata"] }]
}'
es_curl -X PUT "$es/_security/user/rune_vector" \
  --data "{\"password\": \"$VECTOR_ES_PASSWORD\", \"roles\": [\"rune_writer\"], \"full_name\": \"Vector (RUNE records)\"}"

echo "elasticsearch-init: index template rune (rune-*)"
es_curl -X PUT "$es/_index_template/rune" --data "@$here/rune-template.json"

echo "elasticsearch-init: done"
