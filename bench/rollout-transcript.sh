#!/usr/bin/env bash
# Reruns the README "Rolling out a profile change" transcript in a fresh directory under /tmp:
# a gate on 127.0.0.1:18417 (admin 19417) records "last week", then every command of the README
# runs and prints its output. BIN=path/to/ecl-gate picks the binary (default: the debug build).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$REPO/target/debug/ecl-gate}
D=$(mktemp -d /tmp/rollout.XXXX); cd "$D"
mkdir bin; ln -s "$BIN" bin/ecl-gate; export PATH=$D/bin:$PATH
cp -r "$REPO/profiles" .
cat > gate.toml <<'T'
listen = "127.0.0.1:18417"
admin_listen = "127.0.0.1:19417"
[audit]
include_request = true
rotate_bytes = 1048576
T
H=$(echo '{"conversation":"c-42","turn":3}' | ecl-gate hash)
body() { echo '{"request_id":"'$1'","actor":{"principal_id":"agent:7","principal_type":"agent"},"tool":{"name":"'$2'","args":'"$3"'},"profile":{"id":"example","version":"'${4:-1.0.0}'"},"context":{"snapshot":{"conversation":"c-42","turn":3},"snapshot_hash":"'$H'"}}'; }
LONG='{"to":"bob@example.com","subject":"Re: Re: Fwd: minutes of the quarterly planning meeting, with the budget appendix attached"}'
# --- last week's traffic (setup, not shown)
ecl-gate serve --config gate.toml > serve1.log 2>&1 & G=$!; sleep 1
ecl-gate load --url http://127.0.0.1:18417 --scenario mixed --requests 3000 --concurrency 8 --quiet > /dev/null
for i in 1 2 3; do curl -s 127.0.0.1:18417/v1/execute -d "$(body wk-long-$i email.send "$LONG")" > /dev/null; done
for i in 1 2; do curl -s 127.0.0.1:18417/v1/execute -d "$(body wk-read-$i files.read '{"path":"/srv/reports/q3.pdf"}')" > /dev/null; done
kill $G; wait $G
show() { echo "\$ ${SHOWN:-$1}"; eval "$1" 2>&1; SHOWN=; }
show "jq '.profile_version = \"1.1.0\" | .allowed_tools[0].constraints.arg_rules[1].max_len = 60 | .allowed_tools += [{\"name\": \"files.read\"}]' profiles/example/1.0.0.json > profiles/example/1.1.0.json"
show "ecl-gate profiles diff example@1.0.0 example@1.1.0 --profiles profiles"
echo ----
show "ecl-gate replay audit/ecl-audit.log* --profiles profiles --candidate example@1.1.0"
show "ecl-gate replay audit/ecl-audit.log* --profiles profiles --candidate example@1.1.0 --fail-on 'DENY→ALLOW' > /dev/null; echo \"exit \$?\""
show "ecl-gate replay audit/ecl-audit.log* --profiles profiles --candidate example@1.1.0 --json | jq -c '.transitions[] | {from: .from.reason_code, to: .to.reason_code, count, request_ids}'"
echo ----
printf '[shadow]\n"example@1.0.0" = "1.1.0"\n' >> gate.toml
ecl-gate serve --config gate.toml > serve2.log 2>&1 & G=$!; sleep 1
show "cat gate.toml"
show "ecl-gate load --url http://127.0.0.1:18417 --scenario mixed --requests 1000 --concurrency 8 | grep result"
SHOWN="curl -s 127.0.0.1:18417/v1/execute -d '{\"request_id\":\"r-long\", … \"subject\":\"Re: Re: Fwd: minutes of the quarterly planning meeting, with the budget appendix attached\"}}, \"profile\":{\"id\":\"example\",\"version\":\"1.0.0\"}, …}' | jq -c '{decision_type, reason_code, shadow}'"
show "curl -s 127.0.0.1:18417/v1/execute -d '$(body r-long email.send "$LONG")' | jq -c '{decision_type, reason_code, shadow}'"
show "tail -n 1 audit/ecl-audit.log | jq -c '{request_id, decision_type, reason_code, shadow}'"
show "curl -s 127.0.0.1:19417/readyz; echo"
show "curl -s 127.0.0.1:19417/metrics | grep '^ecl_shadow'"
show "ecl-gate replay audit/ecl-audit.log* --profiles profiles 2>/dev/null"
echo ----
SHOWN="curl -s 127.0.0.1:18417/v1/execute -d '{\"request_id\":\"r-long-2\", … \"profile\":{\"id\":\"example\",\"version\":\"1.1.0\"}, …}' | jq -c '{decision_type, reason_code, detail}'"
show "curl -s 127.0.0.1:18417/v1/execute -d '$(body r-long-2 email.send "$LONG" 1.1.0)' | jq -c '{decision_type, reason_code, detail}'"
show "ecl-gate audit verify audit"
kill $G; wait $G
grep -i shadow serve2.log | head -2
echo "dir: $D"
