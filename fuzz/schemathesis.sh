#!/usr/bin/env bash
# Schemathesis (from PyPI) against a running gate, driven by openapi.yaml: every generated
# request must get an answer that conforms to the documented response schemas.
# Needs: pip install schemathesis; a gate on ECL_URL (default 127.0.0.1:8000) and its admin
# listener on ECL_ADMIN_URL (default 127.0.0.1:9000).
#
# `negative_data_rejection` is excluded on purpose: the gate answers schema-violating requests
# with HTTP 200 and a DENY decision (SPEC §1: the decision is the answer), not with a 4xx.
set -euo pipefail
cd "$(dirname "$0")/.."
url=${ECL_URL:-http://127.0.0.1:8000}
admin=${ECL_ADMIN_URL:-http://127.0.0.1:9000}
st run openapi.yaml --url "$url" --include-path /v1/execute \
  --max-examples "${MAX_EXAMPLES:-500}" --exclude-checks negative_data_rejection
st run openapi.yaml --url "$admin" --exclude-path /v1/execute --max-examples 50
