#!/usr/bin/env bash
# Instructions per decision, gate against ceiling, counted by callgrind: repeatable to a few
# tenths of a percent on a busy machine, where wall-clock figures are not.
#
#   bench/callgrind.sh                     release build, 20,000 measured requests per server
#   CG_REQUESTS=5000 bench/callgrind.sh    fewer
#   CG_SERVERS="gate" bench/callgrind.sh   only the gate
#   CG_GATE_BIN=path bench/callgrind.sh    another ecl-gate build (say, before a change)
#   CG_KEEP=1 bench/callgrind.sh           keep the work directory (callgrind.out files for
#                                          callgrind_annotate or kcachegrind)
#
# Each server runs under callgrind twice with the same load, once with CG_REQUESTS fewer
# requests; the difference divided by CG_REQUESTS is the cost of one decision, with start-up,
# connection set-up and shutdown cancelled out. The top functions are listed the same way
# (inclusive instructions per request, from the longer run minus the shorter one).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${CG_REQUESTS:-20000}
servers=${CG_SERVERS:-ceiling gate}
concurrency=${CG_CONCURRENCY:-8}
sync=${CG_SYNC:-never}
top=${CG_TOP:-40}

command -v valgrind >/dev/null || { echo "callgrind: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release --bin ecl-gate --example ceiling
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=$target_dir/release/ecl-gate
gate_bin=${CG_GATE_BIN:-$bin}
ceiling=$target_dir/release/examples/ceiling

work=$(mktemp -d "${TMPDIR:-/tmp}/ecl-callgrind.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ "${CG_KEEP:-0}" = 1 ]; then echo "callgrind: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# One run: server kind, requests (warm-up included) -> $work/<kind>-<n>.out
run() {
  local kind=$1 n=$2 out=$work/$1-$2.out err=$work/$1-$2.err log=$work/$1-$2.log
  local cg=(valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no --separate-threads=no)
  if [ "$kind" = ceiling ]; then
    "${cg[@]}" "$ceiling" --listen 127.0.0.1:0 --sync "$sync" --path "$log" 2>"$err" &
  else
    NO_COLOR=1 ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__SYNC="$sync" \
      ECL_AUDIT__PATH="$log" PROFILES_ROOT="$PWD/profiles" "${cg[@]}" "$gate_bin" serve 2>"$err" &
  fi
  server_pid=$!
  local addr=
  for _ in $(seq 1 600); do
    addr=$(grep -o 'serving POST http://[0-9.:]*' "$err" | head -n 1 | sed 's|.*http://||') || true
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then echo "callgrind: the $kind did not start:" >&2; cat "$err" >&2; exit 1; fi
  "$bin" load --url "http://$addr/v1/execute" --requests "$n" --concurrency "$concurrency" \
    --scenario allow --timeout 60s --json --quiet >"$work/$kind-$n.json" \
    || { echo "callgrind: load against the $kind failed" >&2; cat "$work/$kind-$n.json" >&2; exit 1; }
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
  rm -f "$log"
}

total() { # Instructions of a whole run.
  callgrind_annotate --auto=no "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(/,/, "", $1); print $1 }'
}

# Instructions spent in SHA-256's block function. Valgrind cannot run the SHA extensions
# (sha_ni), so under callgrind sha2 takes its portable path, which costs ~10x what the
# hardware path costs outside it: these instructions are reported apart.
sha_compress() {
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null |
    awk '/sha2::sha256::.*compress/ { n = $1; gsub(/,/, "", n); sum += n } END { print sum + 0 }'
}

# Inclusive instructions per function and source file it was inlined from
# ("file.rs:function<TAB>count").
inclusive() {
  callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -F' ' '/^ *[0-9,]+ \(/ && NF >= 3 {
      n = $1; gsub(/,/, "", n)
      name = $0; sub(/^ *[0-9,]+ \([^)]*\) +/, "", name); sub(/ \[.*$/, "", name)
      sub(/^[^:]*\//, "", name)
      print name "\t" n
    }'
}

echo "callgrind: $requests measured requests per server at concurrency $concurrency, sync $sync" >&2
base=2000
for kind in $servers; do
  run "$kind" "$base"
  run "$kind" "$((base + requests))"
  short=$(total "$work/$kind-$base.out")
  long=$(total "$work/$kind-$((base + requests)).out")
  per=$(( (long - short) / requests ))
  sha=$(( ($(sha_compress "$work/$kind-$((base + requests)).out") - $(sha_compress "$work/$kind-$base.out")) / requests ))
  echo "$kind: $per instructions per request, $sha of them in SHA-256's block function (see above)"
  echo "$per" >"$work/$kind.per"
  join -t $'\t' <(inclusive "$work/$kind-$((base + requests)).out" | sort -t $'\t' -k1,1 -u) \
    <(inclusive "$work/$kind-$base.out" | sort -t $'\t' -k1,1 -u) |
    awk -F'\t' -v r="$requests" '{ d = ($2 - $3) / r; if (d >= 50) printf "%10.0f  %s\n", d, $1 }' |
    sort -rn | head -n "$top" >"$work/$kind.top"
  sed 's/^/  /' "$work/$kind.top"
done
if [ -f "$work/gate.per" ] && [ -f "$work/ceiling.per" ]; then
  awk -v g="$(cat "$work/gate.per")" -v c="$(cat "$work/ceiling.per")" \
    'BEGIN { printf "gate/ceiling instructions per request: %.2f\n", g / c }'
fi
