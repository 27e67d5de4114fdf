#!/usr/bin/env bash
# ecl-gate against its speed-of-light ceiling (examples/ceiling.rs), measured back to back with
# the same load, so the gate/ceiling ratio holds on a noisy machine. Two load generators send the
# same request: the project's own (`ecl-gate load`) and wrk (Debian's `wrk`), which costs less CPU
# per request and so leaves more of a small machine to the server.
#
#   bench/run.sh                                full run: both load generators, concurrency 1, 64
#                                               and 256, audit sync never and always, 20 s each
#                                               after 3 s warm-up
#   BENCH_DURATION=5s BENCH_WARMUP=1s bench/run.sh    a quick run
#   BENCH_ROUNDS=3 bench/run.sh                 every ceiling/gate pair 3 times, then medians
#   BENCH_SMOKE=1 bench/run.sh                  CI: debug build, 1 s per server, fails only if an
#                                               answer FAILs; no thresholds
#   BENCH_LOAD=wrk bench/run.sh                 one load generator only (`ecl-gate` or `wrk`)
#   BENCH_CHECKPOINTS=1 bench/run.sh            also the gate with signed checkpoints on (issue 9:
#                                               `audit.checkpoint_every` 1000, a key made in the
#                                               work directory), as server `gate+cp` in every round
#   BENCH_SHADOW=1 bench/run.sh                 also the gate with a shadow candidate (issue 17:
#                                               `example@1.0.0` shadowed by `1.0.1`, a copy that
#                                               agrees on every request), as server `gate+sh`
#
# More knobs: BENCH_CONCURRENCY ("1 64 256"), BENCH_SYNC ("never always"), BENCH_SCENARIO (allow),
# BENCH_LOAD_THREADS (ecl-gate load's threads, 1), BENCH_WRK_THREADS (2), BENCH_GATE_LOG (the gate's log filter; default info, one line per
# decision; "info,ecl_gate::decision=warn" drops that line and keeps the start-up line),
# BENCH_GATE_BIN (another ecl-gate build to measure instead of this
# tree's), BENCH_KEEP=1 keeps the work directory (logs, JSON reports).
#
# Columns: req/s = OK decisions per second over the measured window; p50/p99 latency in ms as
# the load generator sees it (p99.9 too); cpu us/req = the server's CPU time (user+sys, all threads) in the
# measured window per answer, steadier than req/s when other work shares the machine; RSS MB =
# the server's peak resident memory (VmHWM); load cores = CPU the load generator itself used
# (it runs on the same machine); ratio = gate/ceiling req/s of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=${BENCH_SMOKE:-0}
if [ "$smoke" = 1 ]; then
  profile=debug
  duration=${BENCH_DURATION:-1s}
  warmup=${BENCH_WARMUP:-0s}
  concurrency=${BENCH_CONCURRENCY:-8}
else
  profile=release
  duration=${BENCH_DURATION:-20s}
  warmup=${BENCH_WARMUP:-3s}
  concurrency=${BENCH_CONCURRENCY:-1 64 256}
fi
loads=${BENCH_LOAD:-ecl-gate wrk}
wrk_threads=${BENCH_WRK_THREADS:-2}
for load in $loads; do
  case $load in
    ecl-gate) ;;
    wrk) command -v wrk >/dev/null || { echo "bench: wrk is not installed (apt-get install wrk), or set BENCH_LOAD=ecl-gate" >&2; exit 1; } ;;
    *) echo "bench: BENCH_LOAD: \`$load\`, expected ecl-gate and/or wrk" >&2; exit 1 ;;
  esac
done
syncs=${BENCH_SYNC:-never always}
rounds=${BENCH_ROUNDS:-1}
scenario=${BENCH_SCENARIO:-allow}
load_threads=${BENCH_LOAD_THREADS:-1}

if [ "$profile" = release ]; then
  cargo build --quiet --release --bin ecl-gate --example ceiling
else
  cargo build --quiet --bin ecl-gate --example ceiling
fi
# Wherever cargo puts builds: CARGO_TARGET_DIR, a config's build.target-dir, or target/.
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ ! -d "$target_dir" ]; then
  echo "bench: cargo names no target directory (got \`$target_dir\`)" >&2
  exit 1
fi
bin=$target_dir/$profile/ecl-gate
ceiling=$target_dir/$profile/examples/ceiling
# The gate under test; another build (say, before a change) can be compared against the same
# ceiling and load generator.
gate_bin=${BENCH_GATE_BIN:-$bin}

work=$(mktemp -d "${TMPDIR:-/tmp}/ecl-bench.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

seconds() { # "20s" / "1.5s" / "2m" -> seconds
  case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;;
    *m) awk -v v="${1%m}" 'BEGIN { print v * 60 }' ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
cpu_ticks() { # user + system clock ticks of a process, all threads
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
peak_rss_mb() {
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}
jnum() { # a number member of the one-line JSON report
  sed -E "s/.*\"$1\":([-0-9.eE+]+|null).*/\1/" "$2"
}

# Starts a server; sets server_pid and addr.
start() {
  local kind=$1 sync=$2 log=$3 err=$work/server.err
  : >"$err"
  if [ "$kind" = ceiling ]; then
    "$ceiling" --listen 127.0.0.1:0 --sync "$sync" --path "$log" 2>"$err" &
  elif [ "$kind" = gate+cp ]; then
    NO_COLOR=1 ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__SYNC="$sync" \
      ECL_AUDIT__PATH="$log" PROFILES_ROOT="$PWD/profiles" ECL_LOG__LEVEL="${BENCH_GATE_LOG:-info}" \
      ECL_AUDIT__CHECKPOINT_KEY="$work/keys/bench-cp.key" ECL_AUDIT__CHECKPOINT_EVERY=1000 \
      "$gate_bin" serve 2>"$err" &
  elif [ "$kind" = gate+sh ]; then
    NO_COLOR=1 ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__SYNC="$sync" \
      ECL_AUDIT__PATH="$log" PROFILES_ROOT="$work/profiles" ECL_LOG__LEVEL="${BENCH_GATE_LOG:-info}" \
      ECL_CONFIG="$work/shadow.toml" "$gate_bin" serve 2>"$err" &
  else
    NO_COLOR=1 ECL_LISTEN=127.0.0.1:0 ECL_ADMIN_LISTEN=127.0.0.1:0 ECL_AUDIT__SYNC="$sync" \
      ECL_AUDIT__PATH="$log" PROFILES_ROOT="$PWD/profiles" ECL_LOG__LEVEL="${BENCH_GATE_LOG:-info}" \
      "$gate_bin" serve 2>"$err" &
  fi
  server_pid=$!
  addr=
  for _ in $(seq 1 100); do
    addr=$(grep -o 'serving POST http://[0-9.:]*' "$err" | head -n 1 | sed 's|.*http://||') || true
    [ -n "$addr" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the $kind did not start:" >&2
  cat "$err" >&2
  exit 1
}

stop() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

warm_s=$(seconds "$warmup")
total_s=$(awk -v a="$warm_s" -v b="$(seconds "$duration")" 'BEGIN { print a + b }')
results=$work/results.tsv
: >"$results"
failed=0

# One measurement: load generator, server kind, sync, concurrency, round -> a line in $results.
measure() {
  local load=$1 kind=$2 sync=$3 conc=$4 round=$5
  local name=$load-$kind-$sync-$conc-$round
  local log=$work/$name.log out=$work/$name.out
  start "$kind" "$sync" "$log"
  local cpu0 cpu1 rss status=0 load_pid
  if [ "$load" = wrk ]; then
    local threads=$((conc < wrk_threads ? conc : wrk_threads))
    if [ "$warm_s" != 0 ]; then
      BENCH_BODY=$work/body.json wrk -t"$threads" -c"$conc" -d"$warmup" -s bench/wrk-post.lua \
        "http://$addr/v1/execute" >/dev/null 2>&1 || true
    fi
    cpu0=$(cpu_ticks "$server_pid")
    # bash's `time` reports the CPU wrk used (user and system seconds).
    (
      TIMEFORMAT='%U %S'
      time BENCH_BODY=$work/body.json wrk -t"$threads" -c"$conc" -d"$duration" --timeout 10s \
        -s bench/wrk-post.lua "http://$addr/v1/execute" >"$out" 2>"$out.err"
    ) 2>"$out.time" || status=$?
    cpu1=$(cpu_ticks "$server_pid")
  else
    "$bin" load --url "http://$addr/v1/execute" --duration "$duration" --warmup "$warmup" \
      --concurrency "$conc" --scenario "$scenario" --threads "$load_threads" --json --quiet \
      >"$out" &
    load_pid=$!
    # The server's CPU is read when measuring starts and when it ends.
    sleep "$warm_s"
    cpu0=$(cpu_ticks "$server_pid")
    wait "$load_pid" || status=$?
    cpu1=$(cpu_ticks "$server_pid")
  fi
  rss=$(peak_rss_mb "$server_pid")
  stop
  rm -f "$log" "$log.checkpoints"
  local ok fail rps p50 p99 p999 load_cores
  if [ "$load" = wrk ]; then
    local line
    line=$(grep '^wrk-report ' "$out" 2>/dev/null || true)
    if [ "$status" != 0 ] || [ -z "$line" ]; then
      echo "bench: wrk against the $kind failed (exit $status):" >&2
      cat "$out" "$out.err" >&2 || true
      failed=1
      return 0
    fi
    field() { echo "$line" | sed -E "s/.* $1=([0-9]+).*/\1/"; }
    local requests duration_us
    requests=$(field requests)
    duration_us=$(field duration_us)
    fail=$(($(field status_errors) + $(field socket_errors)))
    ok=$((requests - fail))
    rps=$(awk -v n="$ok" -v us="$duration_us" 'BEGIN { printf "%.1f", (us > 0 ? n * 1e6 / us : 0) }')
    p50=$(awk -v v="$(field p50_us)" 'BEGIN { print v / 1000 }')
    p99=$(awk -v v="$(field p99_us)" 'BEGIN { print v / 1000 }')
    p999=$(awk -v v="$(field p999_us)" 'BEGIN { print v / 1000 }')
    load_cores=$(awk -v s="$(seconds "$duration")" '{ printf "%.2f", ($1 + $2) / s }' "$out.time")
  else
    if [ "$status" != 0 ] || [ ! -s "$out" ]; then
      echo "bench: load against the $kind failed (exit $status):" >&2
      cat "$out" >&2 || true
      failed=1
      return 0
    fi
    local load_cpu
    ok=$(jnum ok "$out")
    fail=$(jnum fail "$out")
    rps=$(jnum throughput_rps "$out")
    p50=$(jnum p50 "$out")
    p99=$(jnum p99 "$out")
    p999=$(jnum p99_9 "$out")
    load_cpu=$(jnum load_cpu_s "$out")
    load_cores=$(awk -v c="$load_cpu" -v s="$total_s" 'BEGIN { printf "%.2f", (c == "null" ? 0 : c / s) }')
  fi
  local cpu_us
  cpu_us=$(awk -v t=$((cpu1 - cpu0)) -v n="$ok" 'BEGIN { printf "%.1f", (n > 0 ? t * 10000 / n : 0) }')
  [ "$fail" = 0 ] || failed=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$load" "$sync" "$conc" "$round" "$kind" "$rps" "$p50" "$p99" "$p999" "$cpu_us" "$rss" \
    "$load_cores" "$fail" >>"$results"
}

# The request wrk sends: exactly the one `ecl-gate load --scenario` sends (one scenario only).
if [[ " $loads " == *" wrk "* ]]; then
  "$bin" load --scenario "$scenario" --print-body >"$work/body.json"
fi

kinds="ceiling gate"
if [ "${BENCH_CHECKPOINTS:-0}" = 1 ]; then
  # TEST FIXTURE ONLY: a throwaway signing key, made and deleted with the work directory.
  "$bin" keygen --out "$work/keys" --kid bench-cp >"$work/keygen.out" 2>&1 || { cat "$work/keygen.out" >&2; exit 1; }
  kinds="ceiling gate gate+cp"
fi
if [ "${BENCH_SHADOW:-0}" = 1 ]; then
  # The shipped profiles plus an agreeing candidate: the shadow's cost without disagreements.
  cp -r profiles "$work/profiles"
  sed 's/"profile_version": "1.0.0"/"profile_version": "1.0.1"/' profiles/example/1.0.0.json \
    >"$work/profiles/example/1.0.1.json"
  printf '[shadow]\n"example@1.0.0" = "1.0.1"\n' >"$work/shadow.toml"
  kinds="$kinds gate+sh"
fi

echo "bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); load: $scenario," \
  "$duration after $warmup warm-up, load generators: $loads, $rounds round(s)" >&2
for load in $loads; do
  for sync in $syncs; do
    for conc in $concurrency; do
      for round in $(seq 1 "$rounds"); do
        echo "bench: $load, sync=$sync concurrency=$conc round $round: ${kinds// /, then }" >&2
        for kind in $kinds; do
          measure "$load" "$kind" "$sync" "$conc" "$round"
        done
      done
    done
  done
done

# The table: every measurement, the ratio to its round's ceiling, then medians when repeated,
# and the ratios the targets are stated in (BENCHMARKS.md).
awk -F'\t' -v rounds="$rounds" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  BEGIN {
    printf "%-8s %-6s %5s %5s %-7s %9s %7s %7s %8s %11s %7s %10s %5s %7s\n", "load", "sync", "conc",
      "round", "server", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "cpu us/req", "RSS MB", "load cores",
      "FAIL", "ratio"
  }
  {
    key = $1 SUBSEP $2 SUBSEP $3
    if ($5 == "ceiling") ceil[key, $4] = $6
    ratio = ($5 != "ceiling" && ceil[key, $4] > 0) ? sprintf("%.2f", $6 / ceil[key, $4]) : ""
    printf "%-8s %-6s %5s %5s %-7s %9.0f %7.3f %7.3f %8.3f %11s %7s %10s %5s %7s\n", $1, $2, $3, $4, $5,
      $6, $7, $8, $9, $10, $11, $12, $13, ratio
    rps[key, $5] = rps[key, $5] " " $6
    p50s[key, $5] = p50s[key, $5] " " $7
    p99s[key, $5] = p99s[key, $5] " " $8
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
  }
  END {
    printf "\n%s\n", (rounds > 1 ? "medians over " rounds " rounds" : "summary")
    printf "%-8s %-6s %5s %13s %11s %7s %12s %12s\n", "load", "sync", "conc", "ceiling req/s", "gate req/s",
      "ratio", "gate p99 ms", "ceil p99 ms"
    for (i = 1; i <= n; i++) {
      split(order[i], k, SUBSEP)
      c = median(rps[order[i], "ceiling"]); g = median(rps[order[i], "gate"])
      printf "%-8s %-6s %5s %13.0f %11.0f %7.2f %12.3f %12.3f\n", k[1], k[2], k[3], c, g, (c > 0 ? g / c : 0),
        median(p99s[order[i], "gate"]), median(p99s[order[i], "ceiling"])
      gate[k[1], k[2], k[3]] = g
      for (extra = 1; extra <= 2; extra++) {
        x = (extra == 1 ? "gate+cp" : "gate+sh")
        if ((order[i], x) in rps) {
          v = median(rps[order[i], x])
          printf "%-8s %-6s %5s %13s %11.0f %7.2f %12.3f  (%s)\n", k[1], k[2], k[3], "", v, (c > 0 ? v / c : 0),
            median(p99s[order[i], x]), x
        }
      }
    }
    for (i = 1; i <= n; i++) {
      split(order[i], k, SUBSEP)
      if (k[2] == "always" && gate[k[1], "never", k[3]] > 0)
        printf "%s: gate always/never at concurrency %s: %.2f\n", k[1], k[3], gate[k[1], "always", k[3]] / gate[k[1], "never", k[3]]
      if (k[3] == 1) {
        cp50 = median(p50s[order[i], "ceiling"]); cp99 = median(p99s[order[i], "ceiling"])
        if (cp50 > 0 && cp99 > 0)
          printf "%s: sync=%s concurrency 1: gate/ceiling latency p50 %.2f, p99 %.2f\n", k[1], k[2],
            median(p50s[order[i], "gate"]) / cp50, median(p99s[order[i], "gate"]) / cp99
      }
      if ((order[i], "gate+cp") in rps) {
        g = median(rps[order[i], "gate"])
        if (g > 0) printf "%s: gate+cp/gate at sync=%s concurrency %s: %.3f\n", k[1], k[2], k[3], median(rps[order[i], "gate+cp"]) / g
      }
    }
  }' "$results"

if [ "$failed" != 0 ]; then
  echo "bench: some answers FAILed or a load run failed (see above)" >&2
  exit 1
fi
