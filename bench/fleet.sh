#!/usr/bin/env bash
# The fleet's PostgreSQL paths, measured (issue 15): the single-use ledger's spend latency and
# throughput, PostgreSQL vs file (examples/ledger_bench.rs), and the audit shipper keeping up
# with a gate at full load (`ecl-gate load`, sync=always). Loopback only.
#
#   ECL_BENCH_POSTGRES_URL=postgres://user:pw@127.0.0.1:5432/db?sslmode=disable bench/fleet.sh
#
# Env: LOAD_SECONDS (default 20), CONCURRENCY (64), SPENDS (5000), SPEND_CONCURRENCY (32).
set -euo pipefail
cd "$(dirname "$0")/.."
url=${ECL_BENCH_POSTGRES_URL:?set ECL_BENCH_POSTGRES_URL to a PostgreSQL on 127.0.0.1}
case "$url" in
  *@127.0.0.1:*|*@localhost:*|*@\[::1\]:*) ;;
  *) echo "fleet.sh: $url is not on loopback; refusing" >&2; exit 2 ;;
esac
seconds=${LOAD_SECONDS:-20}
concurrency=${CONCURRENCY:-64}
cargo build --release --quiet --bin ecl-gate --example ledger_bench
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
gate="$target/release/ecl-gate"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "== ledger: ${SPENDS:-5000} fresh spends, ${SPEND_CONCURRENCY:-32} in flight, PostgreSQL then file"
"$target/release/examples/ledger_bench" "$url" "${SPENDS:-5000}" "${SPEND_CONCURRENCY:-32}"

echo "== shipper: gate at full load for ${seconds}s (sync=always, c=$concurrency), shipper following"
mkdir -p "$work/logs"
ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__PATH="$work/logs/bench.log" \
  ECL_AUDIT__SYNC=always ECL_AUDIT__ROTATE_BYTES=67108864 PROFILES_ROOT=profiles \
  "$gate" serve 2> "$work/gate.err" &
pids+=($!)
for _ in $(seq 100); do grep -q "serving POST" "$work/gate.err" && break; sleep 0.1; done
addr=$(sed -n 's/.*serving POST http:\/\/\([^/]*\)\/.*/\1/p' "$work/gate.err" | head -1)
"$gate" audit ship --to "$url" --stream-prefix "bench-$$-" --batch 1000 --progress 2s "$work/logs" \
  2> "$work/ship.err" &
ship=$!
pids+=($ship)
started=$(date +%s.%N)
"$gate" load --url "http://$addr" --duration "${seconds}s" --concurrency "$concurrency" 2>&1 | tail -4
loaded=$(date +%s.%N)
records=$(cat "$work"/logs/bench.log* | wc -l)
# Caught up when the database holds every record written.
until [ "$(psql "$url" -tAc "SELECT count(*) FROM ecl_audit_records WHERE stream = 'bench-$$-bench.log'" 2>/dev/null || echo 0)" -ge "$records" ]; do
  sleep 0.2
done
caught=$(date +%s.%N)
echo "records written: $records; shipper progress lines during the run (records/s, bytes behind, age of newest shipped record):"
grep "audit ship progress" "$work/ship.err" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/.*shipped=/shipped=/' | head -20
awk -v s="$started" -v l="$loaded" -v c="$caught" -v n="$records" 'BEGIN {
  printf "load ran %.1f s; shipper caught up %.2f s after the load ended; %.0f records/s shipped overall\n", l - s, c - l, n / (c - s) }'
