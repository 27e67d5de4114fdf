#!/usr/bin/env bash
# Shadow evaluation's cost (issue 17): the same gate binary with and without a shadow candidate
# that agrees on every request (`example@1.0.0` shadowed by `1.0.1`, a copy), alternated in each
# round under the same load, so a noisy machine hits both alike. sync = never, so the audit
# disk does not hide the CPU the second decision costs. Loopback only.
#
#   bench/shadow.sh                          release build, 3 rounds of 10 s after 2 s warm-up
#   BIN=path ROUNDS=4 DUR=20s CONC=256 bench/shadow.sh
#
# Columns: req/s (OK answers per second, as `ecl-gate load` measures them), p99 latency, cpu
# us/req (the gate's user+system CPU in the measured window per answer: steadier than req/s when
# other work shares the machine). bench/run.sh with BENCH_SHADOW=1 measures the same against the
# ceiling server.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --release --bin ecl-gate)
  BIN=$repo/target/release/ecl-gate
fi
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10s}; WARM=${WARM:-2s}; CONC=${CONC:-64}
work=$(mktemp -d "${TMPDIR:-/tmp}/ecl-shadow.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cp -r "$repo/profiles" "$work/profiles"
sed 's/"profile_version": "1.0.0"/"profile_version": "1.0.1"/' "$repo/profiles/example/1.0.0.json" \
  >"$work/profiles/example/1.0.1.json"
: >"$work/off.toml"
printf '[shadow]\n"example@1.0.0" = "1.0.1"\n' >"$work/on.toml"
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
jnum() { sed -E "s/.*\"$1\":([-0-9.eE+]+|null).*/\1/" "$2"; }

echo "shadow: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS round(s) of $DUR after $WARM, concurrency $CONC" >&2
for round in $(seq 1 "$ROUNDS"); do
  for kind in off on; do
    rm -f "$work/audit.log" "$work/server.err"
    NO_COLOR=1 ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__SYNC=never \
      ECL_AUDIT__PATH="$work/audit.log" PROFILES_ROOT="$work/profiles" ECL_CONFIG="$work/$kind.toml" \
      ECL_LOG__LEVEL="info,ecl_gate::decision=warn" "$BIN" serve 2>"$work/server.err" &
    pid=$!
    addr=
    for _ in $(seq 1 100); do
      addr=$(grep -o 'serving POST http://[0-9.:]*' "$work/server.err" 2>/dev/null | head -n1 | sed 's|.*http://||') || true
      [ -n "$addr" ] && break
      sleep 0.1
    done
    [ -n "$addr" ] || { echo "shadow: the gate did not start:" >&2; cat "$work/server.err" >&2; exit 1; }
    out=$work/$kind-$round.json
    "$BIN" load --url "http://$addr/v1/execute" --duration "$DUR" --warmup "$WARM" \
      --concurrency "$CONC" --scenario allow --json --quiet >"$out" &
    load=$!
    sleep "${WARM%s}"
    c0=$(ticks "$pid")
    wait "$load"
    c1=$(ticks "$pid")
    kill "$pid"; wait "$pid" || true; pid=
    ok=$(jnum ok "$out")
    cpu=$(awk -v t=$((c1 - c0)) -v n="$ok" 'BEGIN { printf "%.1f", (n > 0 ? t * 10000 / n : 0) }')
    printf 'round %s  shadow %-3s  req/s %8.0f  p99 ms %7.3f  cpu us/req %6s  FAIL %s\n' \
      "$round" "$kind" "$(jnum throughput_rps "$out")" "$(jnum p99 "$out")" "$cpu" "$(jnum fail "$out")"
  done
done
