#!/usr/bin/env bash
# The embedded demo. First an operator's first day against the simulated
# Cerner sandbox tenant: generate a signing key, publish its JWKS to the
# simulator (standing in for Cerner Central), discover the token endpoint,
# exchange a client assertion for a token and read Patient/12724065. Then the
# pipeline: an embedded Kafka (librdkafka's mock cluster), a worker, jobs for
# the sandbox patients, and a summary read back from the output topics.
#
# Usage: tests/demo/demo.sh [BUILD_DIR]    (default: build)
set -euo pipefail
build=${1:-build}
fhirx="$build/worker/fhirx"
sim="$build/tests/sim/cerner-sim"
kafka="$build/tests/kafka/fhirx-kafka-mock"
for bin in "$fhirx" "$sim" "$kafka"; do
  [[ -x "$bin" ]] || { echo "demo: $bin is missing; run 'make build' first" >&2; exit 1; }
done

tenant=ec2458f2-1e24-41c8-b71b-0e701af7583d
client=fhirx-demo-system-app
work=$(mktemp -d "${TMPDIR:-/tmp}/fhirx-demo.XXXXXX")
sim_pid= kafka_pid= worker_pid=
cleanup() {
  for pid in $worker_pid $kafka_pid $sim_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n==> %s\n' "$*"; }

step "generate a signing key (ES384)"
"$fhirx" keys generate --alg ES384 --out "$work/fhirx-es384.pem"

step "publish the JWKS (on Cerner Central in real life; here the simulator reads the file)"
"$fhirx" keys jwks --key "$work/fhirx-es384.pem" > "$work/jwks.json"
echo "wrote $work/jwks.json"

# The simulator registers our System app with every scope the Cerner query set needs,
# as an operator would tick them in Code Console.
scopes=$(printf '"system/%s.read",' AllergyIntolerance Binary CarePlan CareTeam Condition Coverage \
  Device DiagnosticReport DocumentReference Encounter Goal Immunization Location \
  MedicationRequest Observation Organization Patient Practitioner Procedure RelatedPerson \
  ServiceRequest)
cat > "$work/sim.json" <<JSON
{"seed": 42, "tenants": [{"id": "$tenant", "sandbox": true, "patients": 20, "expires_in": 570,
  "clients": [{"client_id": "$client", "jwks_file": "$work/jwks.json", "scopes": [${scopes%,}]}]}]}
JSON

step "start the simulated Cerner sandbox"
"$sim" --config "$work/sim.json" --port-file "$work/sim.port" &
sim_pid=$!
for _ in $(seq 100); do [[ -s "$work/sim.port" ]] && break; sleep 0.1; done
[[ -s "$work/sim.port" ]] || { echo "demo: the simulator did not start" >&2; exit 1; }
port=$(cat "$work/sim.port")
echo "FHIR base http://127.0.0.1:$port/r4/$tenant"

cat > "$work/fhirx.json" <<JSON
{
  "tenants": [{"id": "$tenant", "environment": "sandbox",
               "fhir_base": "http://127.0.0.1:$port/r4/$tenant", "client_id": "$client"}],
  "keys": [{"path": "fhirx-es384.pem"}]
}
JSON

step "fhirx scopes: what to tick in Code Console"
"$fhirx" scopes --config "$work/fhirx.json" | paste -sd' ' | fold -s -w 100

step "fhirx token: discovery + client assertion + token exchange"
"$fhirx" token --config "$work/fhirx.json"

step "fhirx get Patient/12724065: a read through the whole chain"
"$fhirx" get --config "$work/fhirx.json" --summary Patient/12724065

step "start the embedded Kafka (librdkafka's mock cluster, 3 brokers)"
"$kafka" --bootstrap-file "$work/kafka.bootstrap" --control-file "$work/kafka.control" \
  2>"$work/kafka.log" &
kafka_pid=$!
for _ in $(seq 100); do [[ -s "$work/kafka.control" ]] && break; sleep 0.1; done
[[ -s "$work/kafka.control" ]] || { echo "demo: the embedded Kafka did not start" >&2; exit 1; }
echo "bootstrap servers $(cat "$work/kafka.bootstrap")"

# The same tenant, now with Kafka and the worker settings a demo wants (quick
# group joins on the mock cluster).
cat > "$work/fhirx.json" <<JSON
{
  "tenants": [{"id": "$tenant", "environment": "sandbox",
               "fhir_base": "http://127.0.0.1:$port/r4/$tenant", "client_id": "$client"}],
  "keys": [{"path": "fhirx-es384.pem"}],
  "kafka": {"bootstrap.servers": "$(cat "$work/kafka.bootstrap")",
            "consumer.session.timeout.ms": 6000, "consumer.fetch.wait.max.ms": 100},
  "worker": {"threads": 2},
  "admin": {"listen": "127.0.0.1:0"}
}
JSON

step "start a worker (2 threads, logs in worker.log)"
"$fhirx" worker --config "$work/fhirx.json" 2>"$work/worker.log" &
worker_pid=$!

step "enqueue jobs for the ten sandbox patients"
patients=(12724065 12724066 12724067 12724068 12724069 12724070 12724071 12742399 12742397 12742400)
for i in 0 2 4 6 8; do
  "$fhirx" enqueue --config "$work/fhirx.json" --tenant "$tenant" \
    --patients "${patients[$i]},${patients[$((i + 1))]}" --job-id "demo-$((i / 2 + 1))"
done

# Cerner's $export does not export Coverage, RelatedPerson and ServiceRequest: the bulk
# job fetches those per patient with a follow-up patient job (demo-bulk.per-patient.N.1).
step "enqueue a Group bulk \$export of all ten sandbox patients (kick-off, polls, NDJSON files)"
"$fhirx" enqueue --config "$work/fhirx.json" --tenant "$tenant" \
  --group 11ec-d16a-b40370f8-9d31-577f11a339c5 --job-id demo-bulk

step "fhirx report: read back from fhirx.status and fhirx.results"
"$fhirx" report --config "$work/fhirx.json" --expect-jobs 7 --timeout 120

step "stop the worker (SIGTERM: drain, flush, commit)"
kill -TERM "$worker_pid"
status=0
wait "$worker_pid" || status=$?
worker_pid=
echo "worker exited with status $status"
[[ $status -eq 0 ]] || { tail -20 "$work/worker.log" >&2; exit 1; }

printf '\ndemo finished: key, JWKS, discovery, token, read, the Kafka pipeline and a bulk export all work.\n'
