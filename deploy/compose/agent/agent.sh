#!/bin/sh
# The demo agent. It knows the gate's address and its own token, nothing else: no tool
# credential, no grant key, and no route to the tools network. Exits non-zero if the bypass in
# step 5 ever succeeds.
set -u
GATE_URL="${GATE_URL:-http://gate:8000/v1/execute}"
TOOL_URL="${TOOL_URL:-http://demo-tool:8080/call}"
# `-H @file`: the token stays out of the command line (and so out of `ps`) and is never printed.
AUTH=@/run/token/authorization

echo "== 1. an allowed call, through the gate: ALLOW, forwarded, with the tool's answer in execution"
curl -sS -H 'content-type: application/json' -H "$AUTH" --data @/agent/allow.json "$GATE_URL"
echo

echo "== 2. a refused call, through the gate: DENY, the tool is never contacted"
curl -sS -H 'content-type: application/json' -H "$AUTH" --data @/agent/deny.json "$GATE_URL"
echo

echo "== 3. the allowed call without a token: 401 DENY CALLER_UNAUTHENTICATED, audited"
curl -sS -H 'content-type: application/json' --data @/agent/allow.json "$GATE_URL"
echo

echo "== 4. asking for another agent's profile: DENY CALLER_NOT_PERMITTED, audited"
sed 's/"id":"demo"/"id":"ops"/' /agent/allow.json \
  | curl -sS -H 'content-type: application/json' -H "$AUTH" --data @- "$GATE_URL"
echo

echo "== 5. a bypass: the agent calls the tool directly"
if curl -sS -m 5 -H 'content-type: application/json' \
    --data '{"channel":"payroll","message":"salaries attached"}' "$TOOL_URL"; then
  echo
  echo "BYPASS REACHED THE TOOL: this wiring is broken"
  exit 1
fi
echo "bypass failed, as it must: the tool is not on any network the agent is on"
