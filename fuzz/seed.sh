#!/usr/bin/env bash
# Seeds the fuzz corpora from the vendored vectors and the test fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/{canonical,request,profile,decide,checkpoint}
python3 - <<'PY'
import hashlib, json, pathlib
def put(target, data):
    d = pathlib.Path("fuzz/corpus") / target
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
for line in open("tests/vectors/canonical.jsonl", encoding="utf-8"):
    put("canonical", json.loads(line)["input"].encode("utf-8"))
for line in open("tests/vectors/request_hash.jsonl", encoding="utf-8"):
    body = json.loads(line)["request"].encode("utf-8")
    put("request", body); put("decide", body); put("canonical", body)
for path in pathlib.Path("profiles").rglob("*.json"):
    put("profile", path.read_bytes())
for path in pathlib.Path("tests/fixtures/decisions").glob("*.json"):
    put("canonical", path.read_bytes())
# The checkpoints and the proof in the README's transcript.
readme = open("README.md", encoding="utf-8").read()
for block in readme.split("$ ")[1:]:
    out = block.split("\n", 1)[-1]
    if "\n\n\u2014 " in out:
        put("checkpoint", out.split("\n$")[0].split("\n```")[0].encode("utf-8"))
PY
echo "seeded: $(ls fuzz/corpus/canonical | wc -l) canonical, $(ls fuzz/corpus/request | wc -l) request, $(ls fuzz/corpus/profile | wc -l) profile, $(ls fuzz/corpus/decide | wc -l) decide, $(ls fuzz/corpus/checkpoint | wc -l) checkpoint"
