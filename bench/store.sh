#!/usr/bin/env bash
# What a large profile store costs at start (issue 18): generates a store of many profile
# versions, starts the release gate on it (two free loopback ports) and reports the
# seconds until /readyz answers 200, the CPU the start took and the gate's peak resident memory.
#
#   bench/store.sh                    `same` store: 1,000 profiles x 10 versions x 20 tools, each
#                                     tool with one `pattern` rule, `^[a-z]+$` everywhere (~79 MB)
#   bench/store.sh distinct           the same shape, every pattern different (200,000 patterns)
#   bench/store.sh none               the same shape, a `max_len` rule instead of a pattern
#   STORE_ROUNDS=3 bench/store.sh     start the gate 3 times on the same store, one line each
#   STORE_LOAD=5s bench/store.sh; STORE_ROOT=profiles STORE_LOAD=5s bench/store.sh shipped
#                                     CPU per decision with 10,004 versions, then with the 4
#                                     shipped ones: it should not differ
#
# More knobs: STORE_PROFILES (1000), STORE_VERSIONS (10), STORE_TOOLS (20), STORE_BIN (another
# ecl-gate build to measure instead of this tree's release build), STORE_LOG (the gate's log
# filter; unset = the gate's default), STORE_LOAD (e.g. `5s`: after /readyz, send
# `ecl-gate load -c 16` for that long and report the gate's CPU per decision, to compare with a
# store of the shipped profiles only: `decide()` must not get slower as the store grows),
# STORE_ROOT (measure this existing profiles root instead of generating one; the store kind
# then only labels the output), STORE_KEEP=1 keeps the work directory (and the store in it).
#
# Columns: ready s = wall seconds from spawn to the first 200 from /readyz; cpu s = the gate's
# user+system CPU by then (steadier than wall time when other work shares the machine); peak MB
# = VmHWM, the most resident memory the process ever held; rss MB = VmRSS once ready.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:-same}
case $kind in
  same | distinct | none) ;;
  *) [ -n "${STORE_ROOT:-}" ] || echo "bench/store.sh: unknown store kind \`$kind\`, expected same, distinct or none" >&2
     [ -n "${STORE_ROOT:-}" ] || exit 2 ;;
esac
profiles=${STORE_PROFILES:-1000}
versions=${STORE_VERSIONS:-10}
tools=${STORE_TOOLS:-20}
rounds=${STORE_ROUNDS:-1}
if [ -z "${STORE_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --release --bin ecl-gate)
  STORE_BIN=$repo/target/release/ecl-gate
fi
command -v python3 >/dev/null || { echo "bench/store.sh: needs python3 to generate the store" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/store.sh: needs curl to poll /readyz" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ecl-store.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ "${STORE_KEEP:-0}" = 1 ]; then echo "store: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${STORE_ROOT:-}" ]; then
  root=$STORE_ROOT
else
  root=$work/profiles
  echo "store: generating \`$kind\`: $profiles profiles x $versions versions x $tools tools in $work/profiles" >&2
  python3 - "$work/profiles" "$kind" "$profiles" "$versions" "$tools" <<'PY'
import json, os, sys

root, kind, profiles, versions, tools = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
for p in range(profiles):
    pid = f"agent-{p}"
    os.makedirs(os.path.join(root, pid))
    for v in range(versions):
        version = f"1.{v}.0"
        allowed = []
        for t in range(tools):
            rule = {"path": "$.q", "type": "string"}
            if kind == "same":
                rule["pattern"] = "^[a-z]+$"
            elif kind == "distinct":
                rule["pattern"] = f"^[a-z]+-{p}-{v}-{t}$"
            else:
                rule["max_len"] = 64
            allowed.append({"name": f"tool.{t}", "constraints": {"arg_rules": [rule]}})
        profile = {"profile_id": pid, "profile_version": version, "default": "DENY",
                   "allowed_tools": allowed}
        with open(os.path.join(root, pid, f"{version}.json"), "w") as f:
            json.dump(profile, f, indent=2)
            f.write("\n")
PY
  # The shipped profiles too, so `ecl-gate load`'s built-in requests find `example` 1.0.0.
  cp -r "$repo/profiles/." "$work/profiles/"
fi
echo "store: $(find "$root" -name '*.json' | wc -l) profile versions, $(du -sh "$root" | cut -f1) on disk;" \
  "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
status_mb() { awk -v key="$2:" '$1 == key { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

printf '%-9s %-6s %8s %7s %8s %7s%s\n' store round "ready s" "cpu s" "peak MB" "rss MB" \
  "$([ -n "${STORE_LOAD:-}" ] && echo '  cpu us/decision')"
for round in $(seq 1 "$rounds"); do
  rm -f "$work/audit.log" "$work/server.err"
  # Two free loopback ports (the log line naming them may be filtered out by STORE_LOG).
  read -r port admin_port < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
  start=$(date +%s.%N)
  env NO_COLOR=1 ECL_LISTEN=127.0.0.1:$port ECL_ADMIN_LISTEN=127.0.0.1:$admin_port ECL_AUDIT__SYNC=never \
    ECL_AUDIT__PATH="$work/audit.log" PROFILES_ROOT="$root" \
    ${STORE_LOG:+ECL_LOG__LEVEL="$STORE_LOG"} "$STORE_BIN" serve 2>"$work/server.err" &
  pid=$!
  ready=
  while kill -0 "$pid" 2>/dev/null; do
    if curl -sf -o /dev/null "http://127.0.0.1:$admin_port/readyz"; then
      ready=$(date +%s.%N)
      break
    fi
    sleep 0.01
  done
  [ -n "$ready" ] || { echo "store: the gate did not become ready:" >&2; tail -n 5 "$work/server.err" >&2; exit 1; }
  cpu=$(ticks "$pid")
  peak=$(status_mb "$pid" VmHWM)
  rss=$(status_mb "$pid" VmRSS)
  per_decision=
  if [ -n "${STORE_LOAD:-}" ]; then
    c0=$(ticks "$pid")
    "$STORE_BIN" load --url "http://127.0.0.1:$port/v1/execute" --duration "$STORE_LOAD" --concurrency 16 \
      --scenario allow --json --quiet >"$work/load.json"
    c1=$(ticks "$pid")
    ok=$(sed -E 's/.*"ok":([0-9]+).*/\1/' "$work/load.json")
    per_decision=$(awk -v c0="$c0" -v c1="$c1" -v hz="$hz" -v ok="$ok" \
      'BEGIN { printf "  %.1f (%d decisions)", (c1 - c0) / hz * 1e6 / ok, ok }')
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  awk -v kind="$kind" -v round="$round" -v s="$start" -v r="$ready" -v cpu="$cpu" -v hz="$hz" \
    -v peak="$peak" -v rss="$rss" -v extra="$per_decision" \
    'BEGIN { printf "%-9s %-6s %8.2f %7.2f %8s %7s%s\n", kind, round, r - s, cpu / hz, peak, rss, extra }'
done
