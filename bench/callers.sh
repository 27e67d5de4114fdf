#!/usr/bin/env bash
# What knowing the caller costs (issue 14): the same gate and load, plain HTTP vs TLS, no
# authentication vs mTLS + bindings and vs JWT (cached) + bindings, and TLS handshakes per
# second. Pairs run back to back, rounds interleaved, so the ratios hold on a shared machine.
#
#   bench/callers.sh                           10 s per run after 2 s warm-up, 3 rounds, c=64
#   BENCH_DURATION=5s BENCH_ROUNDS=1 bench/callers.sh    a quick run
#
# Knobs: BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_ROUNDS (3), BENCH_CONCURRENCY (64),
# BENCH_HANDSHAKE_CONCURRENCY (8), BENCH_KEEP=1 keeps the work directory, BENCH_GATE_BIN (a
# built ecl-gate to measure instead of building this tree's).
# Everything listens on 127.0.0.1 and the load is bounded by the durations above.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-2s}
rounds=${BENCH_ROUNDS:-3}
concurrency=${BENCH_CONCURRENCY:-64}
handshake_concurrency=${BENCH_HANDSHAKE_CONCURRENCY:-8}

if [ -n "${BENCH_GATE_BIN:-}" ]; then
  bin=$BENCH_GATE_BIN
else
  cargo build --quiet --release --bin ecl-gate
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin=$target_dir/release/ecl-gate
fi
work=$(mktemp -d)
if [ "${BENCH_KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; else echo "work directory: $work"; fi

# Certificates (test material, made here and thrown away): a CA, the gate's certificate for
# 127.0.0.1/localhost, and an agent certificate with a SPIFFE URI SAN.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout gate.key -out gate.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > gate.ext
  openssl x509 -req -in gate.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile gate.ext -out gate.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=agent" \
    -keyout agent.key -out agent.csr 2>/dev/null
  printf 'subjectAltName=URI:spiffe://bench.local/ns/agents/sa/agent\n' > agent.ext
  openssl x509 -req -in agent.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile agent.ext -out agent.pem 2>/dev/null
)
"$bin" keygen --out "$work/jwt" --kid bench > /dev/null 2>&1
"$bin" token --key "$work/jwt/bench.key" --kid bench --issuer bench --audience ecl-gate \
  --subject system:serviceaccount:agents:agent --ttl 2h > "$work/token"

common() {
  cat <<EOF
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
profiles_root = "$PWD/profiles"
[audit]
path = "$work/audit-$1.log"
sync = "never"
[log]
level = "warn,ecl_gate::cli=info"
EOF
}
bindings() {
  cat <<EOF
[[bindings]]
caller = "$1"
profiles = ["example@1.*"]
principals = ["agent:*"]
EOF
}
tls() {
  cat <<EOF
[listen_tls]
cert_file = "$work/gate.pem"
key_file = "$work/gate.key"
EOF
}
{ common plain; } > "$work/plain.toml"
{ common tls; tls; } > "$work/tls.toml"
{ common mtls; tls; echo "client_ca_file = \"$work/ca.pem\""; printf '[auth]\nmethods = ["mtls"]\n'; bindings "spiffe://bench.local/ns/agents/*"; } > "$work/mtls.toml"
{ common jwt; printf '[auth]\nmethods = ["jwt"]\n[auth.jwt]\nissuer = "bench"\naudience = "ecl-gate"\n[auth.jwt.keys.bench]\nfile = "%s"\nalg = "EdDSA"\n' "$work/jwt/bench.pub"; bindings "system:serviceaccount:agents:*"; } > "$work/jwt.toml"

# Starts the gate with config $1; sets $url.
start() {
  "$bin" serve --config "$work/$1.toml" 2> "$work/$1.log" &
  pid=$!
  for _ in $(seq 100); do
    url=$(sed -n 's/.*serving POST \(https\?:\/\/[^ ]*\).*/\1/p' "$work/$1.log" | head -1)
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "bench: gate $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

# run NAME CONFIG [load flags…]: prints decisions/s (OK answers only; any FAIL aborts).
run() {
  local name=$1 config=$2; shift 2
  start "$config"
  local report
  report=$("$bin" load --url "$url" --duration "$duration" --warmup "$warmup" --quiet --json "$@") || {
    echo "bench: $name had failures: $report" >&2; stop; exit 1; }
  stop
  local rps
  rps=$(printf '%s' "$report" | sed -n 's/.*"throughput_rps":\([0-9.]*\).*/\1/p')
  printf '%s %s\n' "$name" "$rps" >> "$work/results"
  printf '  %-22s %10.0f /s\n' "$name" "$rps"
}

tls_flags=(--cacert "$work/ca.pem")
for round in $(seq "$rounds"); do
  echo "round $round/$rounds (keep-alive, c=$concurrency; handshakes c=$handshake_concurrency)"
  run plain plain -c "$concurrency"
  run tls tls -c "$concurrency" "${tls_flags[@]}"
  run mtls+bindings mtls -c "$concurrency" "${tls_flags[@]}" --cert "$work/agent.pem" --key "$work/agent.key"
  run jwt+bindings jwt -c "$concurrency" --bearer-file "$work/token"
  run plain-new-conn plain -c "$handshake_concurrency" --new-connections
  run tls-handshakes tls -c "$handshake_concurrency" --new-connections "${tls_flags[@]}"
done

median() { grep "^$1 " "$work/results" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
plain=$(median plain); tls=$(median tls); mtls=$(median mtls+bindings); jwt=$(median jwt+bindings)
newconn=$(median plain-new-conn); handshakes=$(median tls-handshakes)
echo
echo "medians over $rounds round(s), $duration each:"
printf '  plain HTTP              %8.0f decisions/s\n' "$plain"
printf '  TLS                     %8.0f decisions/s   TLS/plain          %.3f\n' "$tls" "$(echo "$tls / $plain" | bc -l)"
printf '  mTLS + bindings         %8.0f decisions/s   mTLS+bind/plain    %.3f\n' "$mtls" "$(echo "$mtls / $plain" | bc -l)"
printf '  JWT (cached) + bindings %8.0f decisions/s   JWT+bind/plain     %.3f\n' "$jwt" "$(echo "$jwt / $plain" | bc -l)"
printf '  new plain connections   %8.0f per s (one request each)\n' "$newconn"
printf '  new TLS handshakes      %8.0f per s (one request each)\n' "$handshakes"
