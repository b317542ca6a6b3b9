#!/usr/bin/env bash
# The embedded demo: an operator's first day against the simulated Cerner
# sandbox tenant. Generates a signing key, publishes its JWKS to the simulator
# (standing in for Cerner Central), discovers the token endpoint, exchanges a
# client assertion for a token and reads Patient/12724065.
#
# Usage: tests/demo/demo.sh [BUILD_DIR]    (default: build)
set -euo pipefail
build=${1:-build}
fhirx="$build/worker/fhirx"
sim="$build/tests/sim/cerner-sim"
for bin in "$fhirx" "$sim"; do
  [[ -x "$bin" ]] || { echo "demo: $bin is missing; run 'make build' first" >&2; exit 1; }
done

tenant=ec2458f2-1e24-41c8-b71b-0e701af7583d
client=fhirx-demo-system-app
work=$(mktemp -d "${TMPDIR:-/tmp}/fhirx-demo.XXXXXX")
sim_pid=
cleanup() {
  [[ -n "$sim_pid" ]] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
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

printf '\ndemo finished: key, JWKS, discovery, token and read all work.\n'
