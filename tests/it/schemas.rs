//! `openapi.yaml` and `schemas/*.json` held against the code they describe: the loader and the
//! profile schema agree on shipped and broken profiles, every example in the OpenAPI document
//! validates against its own schema (and the example requests really get the example answers),
//! the bodies the running gate serves validate against the response schemas, and the config
//! schema knows every key with its real default.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ecl_gate::canonical::{self, Value};
use ecl_gate::config::{Config, RawConfig};
use ecl_gate::decision::{Attempt, Context, Decision, ReasonCode};
use ecl_gate::profile::parse_profile;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use jsonschema::Validator;
use serde_json::{json, Value as Json};
use tokio::io::AsyncWriteExt;

use crate::common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_json(path: &str) -> Json {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

pub(crate) fn openapi() -> Json {
    serde_norway::from_str(ecl_gate::admin::OPENAPI_YAML).expect("openapi.yaml is valid YAML")
}

/// A JSON Schema 2020-12 document, checked against the meta-schema before use.
pub(crate) fn schema_file(path: &str) -> Validator {
    let schema = read_json(path);
    jsonschema::draft202012::meta::validate(&schema)
        .unwrap_or_else(|err| panic!("{path} is not a valid 2020-12 schema: {err}"));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A validator for `schema`, which may `$ref` into the OpenAPI document's components.
pub(crate) fn openapi_validator(doc: &Json, schema: &Json) -> Validator {
    let wrapped = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::draft202012::new(&wrapped).unwrap_or_else(|err| panic!("{schema}: {err}"))
}

pub(crate) fn component(doc: &Json, name: &str) -> Validator {
    assert!(
        doc["components"]["schemas"].get(name).is_some(),
        "no component schema {name}"
    );
    openapi_validator(
        doc,
        &json!({ "$ref": format!("#/components/schemas/{name}") }),
    )
}

/// The schema of `/v1/execute`'s answer with `status`, as the document declares it.
pub(crate) fn execute_response(doc: &Json, status: u16) -> Validator {
    let schema = &doc["paths"]["/v1/execute"]["post"]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(schema.is_object(), "no schema for /v1/execute {status}");
    openapi_validator(doc, schema)
}

fn errors(validator: &Validator, instance: &Json) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|err| format!("{} at `{}`", err, err.instance_path()))
        .collect()
}

pub(crate) fn assert_valid(validator: &Validator, instance: &Json, what: &str) {
    let errors = errors(validator, instance);
    assert!(
        errors.is_empty(),
        "{what} does not validate: {errors:#?}\n{instance:#}"
    );
}

pub(crate) fn to_json(value: &Value) -> Json {
    serde_json::from_slice(&canonical::to_canonical(value)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Profiles

/// A valid profile for `t`/`1`, to break one piece at a time.
fn base_profile() -> Json {
    json!({
        "profile_id": "t",
        "profile_version": "1",
        "default": "DENY",
        "allowed_tools": [{
            "name": "email.send",
            "required_controls": { "approval_token": false },
            "constraints": { "arg_rules": [
                { "path": "$.to", "type": "string", "pattern": "^[^@]+@example\\.com$" },
                { "path": "$.n", "type": "integer", "required": false }
            ] }
        }]
    })
}

/// `base_profile()` with the JSON at `pointer` replaced by `new` (`None` removes it).
fn edit(pointer: &str, new: Option<Json>) -> Json {
    let mut profile = base_profile();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = profile
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{pointer}"));
    match (target, new) {
        (Json::Object(map), Some(value)) => {
            map.insert(key.to_owned(), value);
        }
        (Json::Object(map), None) => {
            assert!(map.remove(key).is_some(), "{pointer}");
        }
        (Json::Array(items), Some(value)) => items[key.parse::<usize>().unwrap()] = value,
        (other, _) => panic!("{pointer}: cannot edit {other}"),
    }
    profile
}

fn rule(rule: Json) -> Json {
    edit("/allowed_tools/0/constraints/arg_rules/1", Some(rule))
}

fn loads(profile: &Json) -> Result<(), String> {
    parse_profile("t", "1", profile.to_string().as_bytes())
        .map(drop)
        .map_err(|err| err.to_string())
}

#[test]
fn every_shipped_profile_validates_against_the_schema_and_loads() {
    let schema = schema_file("schemas/profile.schema.json");
    let mut checked = 0;
    for dir in std::fs::read_dir(repo("profiles")).unwrap() {
        let dir = dir.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let id = dir.file_name().unwrap().to_str().unwrap();
            let version = file.file_stem().unwrap().to_str().unwrap();
            let bytes = std::fs::read(&file).unwrap();
            parse_profile(id, version, &bytes)
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
            let value: Json = serde_json::from_slice(&bytes).unwrap();
            assert_valid(&schema, &value, &file.display().to_string());
            checked += 1;
        }
    }
    println!("shipped profiles valid: {checked}");
    assert!(
        checked >= 3,
        "expected the 3 shipped profiles, checked {checked}"
    );
}

#[test]
fn profiles_the_loader_accepts_the_schema_accepts() {
    let schema = schema_file("schemas/profile.schema.json");
    let cases = [
        ("base", base_profile()),
        ("no tools", edit("/allowed_tools", Some(json!([])))),
        (
            "bare tool",
            edit("/allowed_tools/0", Some(json!({ "name": "x" }))),
        ),
        (
            "null controls and constraints",
            edit(
                "/allowed_tools/0",
                Some(json!({ "name": "x", "required_controls": null, "constraints": null })),
            ),
        ),
        (
            "empty controls, null rules",
            edit(
                "/allowed_tools/0",
                Some(
                    json!({ "name": "x", "required_controls": {}, "constraints": { "arg_rules": null } }),
                ),
            ),
        ),
        (
            "empty constraints",
            edit("/allowed_tools/0/constraints", Some(json!({}))),
        ),
        (
            "every extension",
            edit(
                "/allowed_tools/0",
                Some(json!({
                    "name": "x",
                    "required_controls": { "approval_token": true, "on_missing": "ESCALATE" },
                    "additional_args": "deny",
                    "constraints": { "arg_rules": [
                        { "path": "$.a.b[0]", "type": "string", "min_len": 0, "max_len": 3,
                          "enum": [], "pattern": "x", "required": true, "on_violation": "ESCALATE" },
                        { "path": "$.list", "type": "array", "max_items": 0, "on_violation": "DENY" },
                        { "path": "$.o", "type": "object" },
                        { "path": "$.f", "type": "number", "min": -1.5, "max": 1e300 },
                        { "path": "$.g", "type": "number", "min": 2, "max": 2 },
                        { "path": "$.b", "type": "bool" },
                        { "path": "$[3]", "type": "integer", "min": 0 },
                        { "path": "$.weird]key", "type": "string" }
                    ] }
                })),
            ),
        ),
        (
            "additional_args allow",
            edit("/allowed_tools/0/additional_args", Some(json!("allow"))),
        ),
        (
            "128-character id",
            edit("/profile_id", Some(json!("a".repeat(128)))),
        ),
    ];
    for (name, profile) in &cases {
        let id = profile["profile_id"].as_str().unwrap();
        parse_profile(id, "1", profile.to_string().as_bytes())
            .unwrap_or_else(|err| panic!("loader refused `{name}`: {err}"));
        assert_valid(&schema, profile, name);
    }
    println!(
        "good profile variants accepted by loader and schema: {}",
        cases.len()
    );
    assert_eq!(cases.len(), 9);
}

#[test]
fn profiles_the_loader_refuses_the_schema_refuses() {
    let schema = schema_file("schemas/profile.schema.json");
    let s = |path: &str, extra: Json| {
        let mut r = json!({ "path": path, "type": "string" });
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rule(r)
    };
    let cases: Vec<(&str, Json)> = vec![
        ("not an object", json!([base_profile()])),
        ("unknown top-level field", edit("/owner", Some(json!("me")))),
        ("$schema member", edit("/$schema", Some(json!("x")))),
        ("default ALLOW", edit("/default", Some(json!("ALLOW")))),
        ("default lowercase", edit("/default", Some(json!("deny")))),
        ("default missing", edit("/default", None)),
        ("profile_id a number", edit("/profile_id", Some(json!(7)))),
        ("profile_id missing", edit("/profile_id", None)),
        (
            "profile_version empty",
            edit("/profile_version", Some(json!(""))),
        ),
        (
            "profile_version null",
            edit("/profile_version", Some(json!(null))),
        ),
        ("allowed_tools missing", edit("/allowed_tools", None)),
        (
            "allowed_tools an object",
            edit("/allowed_tools", Some(json!({}))),
        ),
        (
            "tool a string",
            edit("/allowed_tools/0", Some(json!("email.send"))),
        ),
        (
            "tool unknown field",
            edit("/allowed_tools/0/rate_limit", Some(json!(5))),
        ),
        (
            "tool name empty",
            edit("/allowed_tools/0/name", Some(json!(""))),
        ),
        ("tool name missing", edit("/allowed_tools/0/name", None)),
        (
            "approval_token a string",
            edit(
                "/allowed_tools/0/required_controls/approval_token",
                Some(json!("yes")),
            ),
        ),
        (
            "on_missing unknown",
            edit(
                "/allowed_tools/0/required_controls/on_missing",
                Some(json!("WARN")),
            ),
        ),
        (
            "required_controls unknown field",
            edit(
                "/allowed_tools/0/required_controls/nonce",
                Some(json!(true)),
            ),
        ),
        (
            "required_controls a bool",
            edit("/allowed_tools/0/required_controls", Some(json!(true))),
        ),
        (
            "additional_args unknown",
            edit("/allowed_tools/0/additional_args", Some(json!("sometimes"))),
        ),
        (
            "additional_args null",
            edit("/allowed_tools/0/additional_args", Some(json!(null))),
        ),
        (
            "constraints unknown field",
            edit("/allowed_tools/0/constraints/rules", Some(json!([]))),
        ),
        (
            "arg_rules an object",
            edit("/allowed_tools/0/constraints/arg_rules", Some(json!({}))),
        ),
        ("rule a string", rule(json!("$.to"))),
        ("rule unknown field", s("$.to", json!({ "maxlen": 3 }))),
        ("rule without type", rule(json!({ "path": "$.to" }))),
        ("rule without path", rule(json!({ "type": "string" }))),
        (
            "rule type empty",
            rule(json!({ "path": "$.to", "type": "" })),
        ),
        (
            "rule type a number",
            rule(json!({ "path": "$.to", "type": 5 })),
        ),
        ("path without $", s("to", json!({}))),
        ("path only $", s("$", json!({}))),
        ("path empty key", s("$..to", json!({}))),
        ("path index not a number", s("$[x]", json!({}))),
        ("path index unclosed", s("$.a[1", json!({}))),
        ("path trailing text", s("$.a[0]b", json!({}))),
        (
            "on_violation unknown",
            s("$.to", json!({ "on_violation": "WARN" })),
        ),
        (
            "on_violation lowercase",
            s("$.to", json!({ "on_violation": "escalate" })),
        ),
        (
            "required a string",
            s("$.to", json!({ "required": "false" })),
        ),
        ("max_len a string", s("$.to", json!({ "max_len": "10" }))),
        ("min_len negative", s("$.to", json!({ "min_len": -1 }))),
        ("enum not an array", s("$.to", json!({ "enum": "a" }))),
        ("enum with a number", s("$.to", json!({ "enum": ["a", 1] }))),
        ("pattern a number", s("$.to", json!({ "pattern": 5 }))),
        (
            "max_items on a string rule",
            s("$.to", json!({ "max_items": 2 })),
        ),
        (
            "max_items on an object rule",
            rule(json!({ "path": "$.o", "type": "object", "max_items": 2 })),
        ),
        (
            "min a string",
            rule(json!({ "path": "$.n", "type": "number", "min": "1" })),
        ),
        (
            "max a bool",
            rule(json!({ "path": "$.n", "type": "number", "max": true })),
        ),
        ("min on a string rule", s("$.to", json!({ "min": 1 }))),
        (
            "max on a bool rule",
            rule(json!({ "path": "$.b", "type": "bool", "max": 1 })),
        ),
        (
            "max_len on a number rule",
            rule(json!({ "path": "$.n", "type": "number", "max_len": 2 })),
        ),
        (
            "min_len on an array rule",
            rule(json!({ "path": "$.n", "type": "array", "min_len": 1 })),
        ),
        (
            "pattern on an integer rule",
            rule(json!({ "path": "$.n", "type": "integer", "pattern": "^1" })),
        ),
        (
            "enum on a bool rule",
            rule(json!({ "path": "$.n", "type": "bool", "enum": ["true"] })),
        ),
    ];
    let mut refused = 0;
    for (name, profile) in &cases {
        assert!(
            loads(profile).is_err(),
            "the loader accepts `{name}`, so it is no bad case: {profile}"
        );
        assert!(
            !errors(&schema, profile).is_empty(),
            "the schema accepts `{name}`, which the loader refuses: {profile}"
        );
        refused += 1;
    }
    println!("bad profiles refused by loader and schema: {refused}");
    assert_eq!(refused, 54);
}

/// The one deliberate difference: the loader keeps an unknown rule type (as the reference does)
/// and fails closed on it whenever the argument is present; editors should flag the typo.
#[test]
fn an_unknown_rule_type_loads_but_the_schema_flags_it() {
    let schema = schema_file("schemas/profile.schema.json");
    let profile = rule(json!({ "path": "$.to", "type": "strng" }));
    assert_eq!(loads(&profile), Ok(()));
    assert!(!errors(&schema, &profile).is_empty());
}

/// What JSON Schema cannot express, named in the schema's description. Only the loader (and
/// `ecl-gate profiles check`) catches these; if the schema ever does, move the case above.
#[test]
fn what_only_the_loader_catches() {
    let schema = schema_file("schemas/profile.schema.json");
    let duplicate = {
        let mut p = base_profile();
        let tool = p["allowed_tools"][0].clone();
        p["allowed_tools"].as_array_mut().unwrap().push(tool);
        p
    };
    let cases = [
        ("tool listed twice", duplicate.to_string()),
        (
            "min_len above max_len",
            rule(json!({ "path": "$.s", "type": "string", "min_len": 5, "max_len": 2 }))
                .to_string(),
        ),
        (
            "min above max",
            rule(json!({ "path": "$.n", "type": "number", "min": 5, "max": 2.5 })).to_string(),
        ),
        (
            "look-behind regex",
            rule(json!({ "path": "$.s", "type": "string", "pattern": "(?<=a)b" })).to_string(),
        ),
        (
            "count with a fraction",
            rule(json!({ "path": "$.l", "type": "array", "max_items": 1.0 })).to_string(),
        ),
        (
            "duplicate key",
            base_profile().to_string().replacen(
                "\"default\":\"DENY\"",
                "\"default\":\"DENY\",\"default\":\"DENY\"",
                1,
            ),
        ),
    ];
    for (name, text) in &cases {
        assert!(
            parse_profile("t", "1", text.as_bytes()).is_err(),
            "loader accepts `{name}`: {text}"
        );
        let value: Json = serde_json::from_str(text).unwrap();
        assert_valid(&schema, &value, name);
    }
    // A profile whose header names another file.
    let other = base_profile().to_string();
    assert!(parse_profile("other", "1", other.as_bytes()).is_err());
    assert_valid(&schema, &base_profile(), "header for another file");
    println!("loader-only checks: {}", cases.len() + 1);
}

// ---------------------------------------------------------------------------------------------
// OpenAPI document

fn refs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Json::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_matches_the_crate() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["jsonSchemaDialect"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Every reason code the gate has, in its order, each described; nothing else.
    let reasons = &doc["components"]["schemas"]["ReasonCode"];
    let declared: Vec<&str> = reasons["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let code: Vec<&str> = ReasonCode::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(declared, code);
    let described = reasons["x-enumDescriptions"].as_object().unwrap();
    assert_eq!(described.len(), code.len());
    for reason in &code {
        let text = described[*reason].as_str().unwrap_or_default();
        assert!(text.len() > 10, "{reason} has no description");
    }
    let types = &doc["components"]["schemas"]["DecisionType"]["enum"];
    assert_eq!(types, &json!(["ALLOW", "DENY", "ESCALATE"]));

    // Every component is a valid 2020-12 schema and every reference resolves.
    let components = doc["components"]["schemas"].as_object().unwrap();
    for (name, schema) in components {
        jsonschema::draft202012::meta::validate(schema)
            .unwrap_or_else(|err| panic!("component {name}: {err}"));
        component(&doc, name);
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    // The execution path on the execution listener, the admin paths on the admin listener.
    assert_eq!(doc["servers"][0]["variables"]["port"]["default"], "8000");
    let paths = doc["paths"].as_object().unwrap();
    let mut names: Vec<&str> = paths.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "/audit/checkpoint",
            "/healthz",
            "/metrics",
            "/openapi.yaml",
            "/readyz",
            "/v1/execute"
        ]
    );
    for (path, item) in paths {
        let port = &item["servers"][0]["variables"]["port"]["default"];
        if path == "/v1/execute" {
            assert!(item.get("servers").is_none());
            assert_eq!(
                item.as_object().unwrap().len(),
                2,
                "only description and post"
            );
        } else {
            assert_eq!(port, "9000", "{path} must be served on the admin port");
        }
    }
    println!(
        "openapi: {} components, {} references, {} reason codes",
        components.len(),
        all.len(),
        code.len()
    );
}

#[test]
fn every_openapi_example_validates_against_its_schema() {
    let doc = openapi();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !op.is_object() || method == "servers" {
                continue;
            }
            let mut media = Vec::new();
            if let Some(content) = op["requestBody"]["content"].as_object() {
                media.extend(content.iter().map(|(t, m)| (format!("request {t}"), m)));
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                for (t, m) in response["content"].as_object().unwrap() {
                    media.push((format!("{status} {t}"), m));
                }
            }
            for (what, m) in media {
                let validator = openapi_validator(&doc, &m["schema"]);
                let examples = m["examples"].as_object();
                for (name, example) in examples.into_iter().flatten() {
                    let label = format!("{method} {path} {what} example `{name}`");
                    assert_valid(&validator, &example["value"], &label);
                    checked += 1;
                }
            }
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Some(examples) = schema["examples"].as_array() {
            let validator = component(&doc, name);
            for example in examples {
                assert_valid(&validator, example, &format!("component {name} example"));
                checked += 1;
            }
        }
    }
    println!("openapi examples valid: {checked}");
    // 5 requests, 6 decisions (200), 1 decision (503), 5 admin JSON bodies (readyz with
    // warnings included, degraded), 2 metrics texts (classic and OpenMetrics), 3 component examples.
    assert_eq!(checked, 23);
}

/// The example answers are what the gate really answers to the example requests (all but the
/// audit block and the build, which depend on the log and the checkout), so they cannot drift.
#[tokio::test]
async fn openapi_example_requests_get_the_example_answers() {
    let doc = openapi();
    let op = &doc["paths"]["/v1/execute"]["post"];
    let requests = &op["requestBody"]["content"]["application/json"]["examples"];
    let answers = &op["responses"]["200"]["content"]["application/json"]["examples"];
    let request_schema = component(&doc, "ExecuteRequest");
    let gate = TestGate::start().await;
    let pairs = [
        ("allowed", "allow"),
        ("constraint_violation", "deny_constraint_violation"),
        ("escalate", "escalate"),
    ];
    for (request, answer) in pairs {
        let body = requests[request]["value"].to_string();
        let (status, got) = gate.execute(body).await;
        assert_eq!(status, 200);
        let mut got = to_json(&got);
        let mut want = answers[answer]["value"].clone();
        for decision in [&mut got, &mut want] {
            let map = decision.as_object_mut().unwrap();
            map.remove("audit");
            map["runtime"].as_object_mut().unwrap().remove("build");
        }
        assert_eq!(got, want, "example `{request}` is answered differently");
    }
    // The REQUEST_SCHEMA_INVALID example answer is for a request that breaks the schema.
    let broken = json!({"request_id":"r-3","actor":{"principal_id":"agent:7","principal_type":"agent","role":"admin"},"tool":{"name":"email.send","args":{}},"profile":{"id":"example","version":"1.0.0"},"context":{"snapshot":null,"snapshot_hash":"x"}});
    assert!(!errors(&request_schema, &broken).is_empty());
    let (_, got) = gate.execute(broken.to_string()).await;
    let want = &answers["deny_schema_invalid"]["value"];
    assert_eq!(to_json(&got)["request_hash"], want["request_hash"]);
    assert_eq!(to_json(&got)["detail"], want["detail"]);
    // Every example request is a request the gate reads (its snapshot hash included).
    for (name, example) in requests.as_object().unwrap() {
        let bytes = example["value"].to_string();
        assert!(
            ecl_gate::request::decode(bytes.as_bytes()).is_ok(),
            "example request `{name}` is refused by the gate"
        );
    }
    let (_, every_field) = gate
        .execute(requests["every_field"]["value"].to_string())
        .await;
    assert_eq!(every_field["reason_code"].str(), "OK");
}

/// The response schemas tell right from wrong: each mutation of a real answer is refused.
#[test]
fn the_response_schemas_refuse_what_the_gate_never_answers() {
    let doc = openapi();
    let ok = execute_response(&doc, 200);
    let failed = execute_response(&doc, 503);
    let examples = &doc["paths"]["/v1/execute"]["post"]["responses"]["200"]["content"]
        ["application/json"]["examples"];
    let allow = examples["allow"]["value"].clone();
    let deny = examples["deny_constraint_violation"]["value"].clone();
    let escalate = examples["escalate"]["value"].clone();
    let unrecorded = doc["paths"]["/v1/execute"]["post"]["responses"]["503"]["content"]
        ["application/json"]["examples"]["audit_write_failed"]["value"]
        .clone();
    let set = |base: &Json, pointer: &str, new: Option<Json>| {
        let mut v = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let map = v.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match new {
            Some(n) => map.insert(key.to_owned(), n),
            None => map.remove(key),
        };
        v
    };
    let hash = |c: &str| json!(format!("sha256:{}", c.repeat(64)));
    let wrong_for_200 = [
        ("extra member", set(&allow, "/extra", Some(json!(1)))),
        ("no audit member", set(&allow, "/audit", None)),
        ("audit null", set(&allow, "/audit", Some(json!(null)))),
        (
            "uppercase hash",
            set(&allow, "/request_hash", Some(hash("A"))),
        ),
        (
            "short hash",
            set(&allow, "/request_hash", Some(json!("sha256:abc"))),
        ),
        (
            "bad provenance_id",
            set(&allow, "/provenance_id", Some(json!("prov_123"))),
        ),
        (
            "unknown reason",
            set(&deny, "/reason_code", Some(json!("NOPE"))),
        ),
        (
            "unknown decision",
            set(&deny, "/decision_type", Some(json!("MAYBE"))),
        ),
        (
            "ALLOW without OK",
            set(&allow, "/reason_code", Some(json!("TOOL_NOT_ALLOWED"))),
        ),
        (
            "ALLOW without call",
            set(&allow, "/approved_call", Some(json!(null))),
        ),
        (
            "ALLOW with detail",
            set(&allow, "/detail", Some(json!("why"))),
        ),
        (
            "DENY with OK",
            set(&deny, "/reason_code", Some(json!("OK"))),
        ),
        (
            "DENY with a call",
            set(&deny, "/approved_call", allow.get("approved_call").cloned()),
        ),
        ("DENY without detail", set(&deny, "/detail", None)),
        (
            "DENY with escalation",
            set(&deny, "/escalation", escalate.get("escalation").cloned()),
        ),
        (
            "ESCALATE without escalation",
            set(&escalate, "/escalation", None),
        ),
        (
            "ESCALATE with DENY reason",
            set(
                &escalate,
                "/reason_code",
                Some(json!("CONSTRAINT_VIOLATION")),
            ),
        ),
        (
            "escalation requires more",
            set(
                &escalate,
                "/escalation/required",
                Some(json!(["approval_token", "nonce"])),
            ),
        ),
        (
            "escalation without rules",
            set(&escalate, "/escalation/rules", Some(json!([]))),
        ),
        (
            "prev_hash without prefix",
            set(&allow, "/audit/prev_hash", Some(json!("GENESIS"))),
        ),
        ("negative seq", set(&allow, "/audit/seq", Some(json!(-1)))),
        (
            "audit extra member",
            set(&allow, "/audit/offset", Some(json!(0))),
        ),
        (
            "other runtime",
            set(&allow, "/runtime/name", Some(json!("ecl"))),
        ),
        (
            "profile without hash",
            set(&allow, "/profile/profile_ref_hash", None),
        ),
        ("AUDIT_WRITE_FAILED with 200", unrecorded.clone()),
    ];
    for (name, body) in &wrong_for_200 {
        assert!(
            !errors(&ok, body).is_empty(),
            "200 schema accepts `{name}`: {body:#}"
        );
    }
    let wrong_for_503 = [
        ("a recorded DENY", deny.clone()),
        ("an ALLOW", allow.clone()),
        ("an ESCALATE", escalate.clone()),
        (
            "ALLOW type",
            set(&unrecorded, "/decision_type", Some(json!("ALLOW"))),
        ),
    ];
    for (name, body) in &wrong_for_503 {
        assert!(
            !errors(&failed, body).is_empty(),
            "503 schema accepts {name}"
        );
    }
    println!(
        "wrong answers refused: {} for 200, {} for 503",
        wrong_for_200.len(),
        wrong_for_503.len()
    );
    assert_eq!((wrong_for_200.len(), wrong_for_503.len()), (25, 4));
}

/// Requests the decoder refuses as REQUEST_SCHEMA_INVALID the request schema refuses, and
/// requests it reads the schema accepts.
#[test]
fn the_request_schema_is_the_decoders_schema() {
    let doc = openapi();
    let schema = component(&doc, "ExecuteRequest");
    let base = to_json(&request(
        "r",
        "email.send",
        email_args("bob@example.com", "hi"),
    ));
    let edit = |pointer: &str, new: Option<Json>| {
        let mut r = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let map = r.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match new {
            Some(v) => map.insert(key.to_owned(), v),
            None => map.remove(key),
        };
        r
    };
    let good = [
        base.clone(),
        edit("/tool/args", Some(json!(null))),
        edit("/tool/args", Some(json!([1, "x"]))),
        edit("/actor/attributes", Some(json!({}))),
        edit("/actor/attributes", Some(json!({ "team": "ops" }))),
        edit("/controls", Some(json!(null))),
        edit("/controls", Some(json!({}))),
        edit(
            "/controls",
            Some(json!({ "approval_token": null, "nonce": "n-1" })),
        ),
        edit("/controls", Some(json!({ "approval_token": "" }))),
        edit("/submitted_at", Some(json!(null))),
        edit("/submitted_at", Some(json!("2026-01-01T00:00:00Z"))),
    ];
    for request in &good {
        let bytes = request.to_string();
        if let Err(rejection) = ecl_gate::request::decode(bytes.as_bytes()) {
            assert_ne!(
                rejection.reason,
                ReasonCode::RequestSchemaInvalid,
                "{request}"
            );
        }
        assert_valid(&schema, request, "a request the decoder reads");
    }
    let bad = [
        json!([]),
        json!("request"),
        edit("/extra", Some(json!(1))),
        edit("/request_id", None),
        edit("/request_id", Some(json!(""))),
        edit("/request_id", Some(json!(7))),
        edit("/actor", None),
        edit("/actor/role", Some(json!("admin"))),
        edit("/actor/principal_id", Some(json!(""))),
        edit("/actor/principal_type", None),
        edit("/actor/attributes", Some(json!({ "n": 1 }))),
        edit("/actor/attributes", Some(json!(["x"]))),
        edit("/tool/args", None),
        edit("/tool/name", Some(json!(""))),
        edit("/tool/extra", Some(json!(null))),
        edit("/profile/id", Some(json!(1))),
        edit("/profile/version", None),
        edit("/profile/extra", Some(json!("x"))),
        edit("/context/snapshot", None),
        edit("/context/snapshot_hash", Some(json!(""))),
        edit("/context/extra", Some(json!(1))),
        edit("/controls", Some(json!("token"))),
        edit("/controls", Some(json!({ "approval_token": 1 }))),
        edit("/controls", Some(json!({ "token": "x" }))),
        edit("/submitted_at", Some(json!(1700000000))),
    ];
    for request in &bad {
        let bytes = request.to_string();
        let rejection = ecl_gate::request::decode(bytes.as_bytes()).unwrap_err();
        assert_eq!(
            rejection.reason,
            ReasonCode::RequestSchemaInvalid,
            "{request}"
        );
        assert!(
            !errors(&schema, request).is_empty(),
            "the request schema accepts what the decoder refuses: {request}"
        );
    }
    println!(
        "requests: {} read by both, {} refused by both",
        good.len(),
        bad.len()
    );
    assert_eq!((good.len(), bad.len()), (11, 25));
}

// ---------------------------------------------------------------------------------------------
// Served bodies

fn panicking_decide(
    _: Attempt<'_>,
    _: &Context,
    _: &ecl_gate::caller::Caller,
    _: SystemTime,
) -> Decision {
    panic!("injected fault: decide panicked (tests/it/schemas.rs)")
}

/// Checks one served decision: status and reason as expected, body valid for that status.
struct Served {
    ok: Validator,
    unauthenticated: Validator,
    failed: Validator,
    reasons: Vec<String>,
}

impl Served {
    fn check(&mut self, status: u16, body: &Value, decision: &str, reason: &str) {
        let body = to_json(body);
        assert_eq!(
            (body["decision_type"].as_str(), body["reason_code"].as_str()),
            (Some(decision), Some(reason)),
            "{body:#}"
        );
        let validator = match status {
            200 => &self.ok,
            401 => &self.unauthenticated,
            503 => &self.failed,
            other => panic!("status {other}: {body:#}"),
        };
        assert_valid(
            validator,
            &body,
            &format!("served {status} {decision} {reason}"),
        );
        if !self.reasons.iter().any(|r| r == reason) {
            self.reasons.push(reason.to_owned());
        }
    }
}

#[tokio::test]
async fn every_reason_the_gate_serves_matches_the_response_schemas() {
    let doc = openapi();
    let mut served = Served {
        ok: execute_response(&doc, 200),
        unauthenticated: execute_response(&doc, 401),
        failed: execute_response(&doc, 503),
        reasons: Vec::new(),
    };
    let error = component(&doc, "Error");
    let mut checked = 0;
    let allow = request("a-1", "email.send", email_args("bob@example.com", "hi"));

    let gate = TestGate::start().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (allow.clone(), "ALLOW", "OK"),
        (
            request("a-2", "email.send", email_args("eve@evil.com", "hi")),
            "DENY",
            "CONSTRAINT_VIOLATION",
        ),
        (
            request("a-3", "email.send", Value::Null),
            "DENY",
            "CONSTRAINT_EVAL_ERROR",
        ),
        (
            request("a-4", "shell.exec", Value::Object(Default::default())),
            "DENY",
            "TOOL_NOT_ALLOWED",
        ),
        (
            request("a-5", "storage.put", Value::Object(Default::default())),
            "DENY",
            "CONTROL_REQUIRED",
        ),
        (
            request_for(
                "nope",
                "1.0.0",
                "a-6",
                "email.send",
                Value::Object(Default::default()),
            ),
            "DENY",
            "PROFILE_NOT_FOUND",
        ),
        (
            with(
                allow.clone(),
                &["context", "snapshot_hash"],
                Some("sha256:0".into()),
            ),
            "DENY",
            "CTX_HASH_MISMATCH",
        ),
        (
            with(allow.clone(), &["actor", "role"], Some("admin".into())),
            "DENY",
            "REQUEST_SCHEMA_INVALID",
        ),
        (
            with(
                request_for(
                    "ops",
                    "1.0.0",
                    "a-7",
                    "deploy.run",
                    Value::object([("service", "billing".into()), ("version", "1".into())]),
                ),
                &["controls"],
                Some(Value::object([("approval_token", "APPROVED".into())])),
            ),
            "DENY",
            "APPROVAL_INVALID",
        ),
        (
            request_for(
                "ops",
                "1.0.0",
                "a-8",
                "deploy.run",
                Value::object([("service", "billing".into()), ("version", "1".into())]),
            ),
            "ESCALATE",
            "APPROVAL_REQUIRED",
        ),
        (
            request_for(
                "ops",
                "1.0.0",
                "a-9",
                "email.send",
                email_args("bob@elsewhere.org", "hi"),
            ),
            "ESCALATE",
            "APPROVAL_REQUIRED",
        ),
    ];
    for (body, decision, reason) in &cases {
        let (status, answer) = gate.execute(bytes_of(body)).await;
        served.check(status, &answer, decision, reason);
        checked += 1;
    }
    let (status, answer) = gate.execute("{broken").await;
    served.check(status, &answer, "DENY", "REQUEST_PARSE_ERROR");
    checked += 1;
    // Not execution attempts: the short JSON error on the execution listener.
    for (method, path, want) in [("GET", "/v1/execute", 405), ("POST", "/v2/execute", 404)] {
        let (status, body) = gate.send(method, path, "{}".into()).await;
        assert_eq!(status, want);
        assert_valid(&error, &to_json(&body), &format!("{method} {path}"));
        checked += 1;
    }

    // A broken profile, a small body limit and one slot for requests in flight.
    let profiles = tempfile::tempdir().unwrap();
    std::fs::create_dir(profiles.path().join("broken")).unwrap();
    std::fs::write(profiles.path().join("broken/1.0.0.json"), "{}").unwrap();
    let small = TestGate::start_with(Options {
        profiles_root: profiles.path().to_owned(),
        max_body_bytes: 1024,
        max_in_flight: 1,
        ..Options::default()
    })
    .await;
    let broken = request_for("broken", "1.0.0", "b-1", "x", Value::Null);
    let (status, answer) = small.execute(bytes_of(&broken)).await;
    served.check(status, &answer, "DENY", "PROFILE_PARSE_ERROR");
    let (status, answer) = small.execute(vec![b' '; 2048]).await;
    served.check(status, &answer, "DENY", "REQUEST_TOO_LARGE");
    let mut slow = tokio::net::TcpStream::connect(small.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/execute HTTP/1.1\r\nHost: gate\r\nContent-Length: 100\r\n\r\n{\"request_id\"",
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, answer) = small.execute(bytes_of(&allow)).await;
    served.check(status, &answer, "DENY", "OVERLOADED");
    drop(slow);
    checked += 3;

    // Callers: a sidecar pinned to one profile, and a gate that wants bearer tokens.
    let pinned = TestGate::start_with(Options {
        bindings: Some(ecl_gate::caller::Bindings {
            bindings: vec![ecl_gate::caller::Binding {
                caller: ecl_gate::caller::Pattern::new("anonymous"),
                profiles: vec![ecl_gate::caller::ProfilePattern::parse("example@1.0.0").unwrap()],
                principals: vec![ecl_gate::caller::PrincipalPattern::parse("agent:*")],
            }],
        }),
        ..Options::default()
    })
    .await;
    let (status, answer) = pinned.execute(bytes_of(&cases[9].0)).await;
    served.check(status, &answer, "DENY", "CALLER_NOT_PERMITTED");
    let authenticated = TestGate::start_with(Options {
        auth: ecl_gate::config::auth::AuthConfig {
            jwt: Some(ecl_gate::config::auth::JwtConfig {
                issuer: "https://issuer.test".into(),
                audience: "ecl-gate".into(),
                jwks_file: None,
                pem_keys: vec![ecl_gate::config::auth::PemKey {
                    kid: "ed-1".into(),
                    alg: ecl_gate::config::auth::JwtAlgorithm::EdDsa,
                    file: repo("tests/fixtures/callers/ed.pub.pem"),
                }],
                clock_skew: std::time::Duration::from_secs(30),
                cache_entries: 10,
                max_token_bytes: 8192,
                reload_interval: std::time::Duration::from_secs(1),
            }),
            mtls: false,
        },
        ..Options::default()
    })
    .await;
    let (status, answer) = authenticated.execute(bytes_of(&allow)).await;
    served.check(status, &answer, "DENY", "CALLER_UNAUTHENTICATED");
    checked += 2;

    let panicking = TestGate::start_with(Options {
        decide: Some(panicking_decide),
        ..Options::default()
    })
    .await;
    let (status, answer) = panicking.execute(bytes_of(&allow)).await;
    served.check(status, &answer, "DENY", "INTERNAL_ERROR");
    checked += 1;

    // A full disk: whatever the decision, 503 DENY AUDIT_WRITE_FAILED with `audit: null`.
    let full = TestGate::start_with(Options {
        audit_path: Some("/dev/full".into()),
        ..Options::default()
    })
    .await;
    for (body, _, _) in cases.iter().take(2).chain(cases.iter().skip(9)) {
        let (status, answer) = full.execute(bytes_of(body)).await;
        assert_eq!(status, 503);
        served.check(status, &answer, "DENY", "AUDIT_WRITE_FAILED");
        checked += 1;
    }

    let all: Vec<&str> = ReasonCode::ALL.iter().map(|r| r.as_str()).collect();
    let mut covered = served.reasons.clone();
    covered.sort_unstable();
    let mut want = all.clone();
    want.sort_unstable();
    assert_eq!(covered, want, "every reason code is served and checked");
    println!(
        "served bodies valid: {checked} ({} reason codes)",
        served.reasons.len()
    );
    assert_eq!(checked, 24);
}

#[test]
fn admin_bodies_match_their_schemas() {
    let doc = openapi();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let root = profiles.to_str().unwrap().to_owned();
    let (mut child, _, admin) =
        crate::cli::spawn_serve_with_admin(dir.path(), &[("ECL_PROFILES_ROOT", root.as_str())]);
    let response = |path: &str, status: u16| {
        let schema = &doc["paths"][path]["get"]["responses"][status.to_string()]["content"]
            ["application/json"]["schema"];
        openapi_validator(&doc, schema)
    };
    let parse = |body: &str| -> Json { serde_json::from_str(body).unwrap() };
    let mut checked = 0;

    let (status, body) = crate::cli::get(&admin, "/healthz");
    assert_eq!(status, 200);
    assert_valid(&response("/healthz", 200), &parse(&body), "/healthz");
    let (status, body) = crate::cli::get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert_valid(&response("/readyz", 200), &parse(&body), "/readyz");
    let (status, body) = crate::cli::get(&admin, "/nope");
    assert_eq!(status, 404);
    assert_valid(&component(&doc, "Error"), &parse(&body), "admin 404");
    let (status, body) = crate::cli::get(&admin, "/openapi.yaml");
    assert_eq!(
        (status, body.as_str()),
        (200, ecl_gate::admin::OPENAPI_YAML)
    );
    checked += 4;

    std::fs::remove_dir(&profiles).unwrap();
    let (status, body) = crate::cli::get(&admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_valid(
        &response("/readyz", 503),
        &parse(&body),
        "/readyz not ready",
    );
    checked += 1;

    child.kill().unwrap();
    child.wait().unwrap();
    println!("admin bodies valid: {checked}");
    assert_eq!(checked, 5);
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn toml_to_json(text: &str) -> Json {
    let value: toml::Value = toml::from_str(text).unwrap_or_else(|err| panic!("{text}: {err}"));
    serde_json::to_value(value).unwrap()
}

fn config_loads(text: &str) -> Result<(), String> {
    let figment =
        Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(text));
    Config::from_figment(figment)
        .map(drop)
        .map_err(|err| err.to_string())
}

/// Walks the schema's `properties` beside the serialized defaults: the same keys, the same
/// default values.
fn compare_defaults(schema: &Json, defaults: &Json, at: &str, count: &mut usize) {
    let properties = schema["properties"].as_object().unwrap();
    let defaults = defaults.as_object().unwrap();
    let mut schema_keys: Vec<&String> = properties.keys().collect();
    let mut config_keys: Vec<&String> = defaults.keys().collect();
    schema_keys.sort();
    config_keys.sort();
    assert_eq!(schema_keys, config_keys, "keys of `{at}`");
    for (key, value) in defaults {
        let property = &properties[key];
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        assert!(
            property["description"]
                .as_str()
                .is_some_and(|d| d.len() > 10),
            "`{path}` has no description"
        );
        if value.is_object() && property.get("properties").is_some() {
            compare_defaults(property, value, &path, count);
        } else {
            assert_eq!(&property["default"], value, "default of `{path}`");
            *count += 1;
        }
    }
}

#[test]
fn the_config_schema_knows_every_key_and_default() {
    let schema_doc = read_json("schemas/config.schema.json");
    let schema = schema_file("schemas/config.schema.json");
    let shipped = std::fs::read_to_string(repo("config/ecl-gate.toml")).unwrap();
    config_loads(&shipped).unwrap();
    assert_valid(&schema, &toml_to_json(&shipped), "config/ecl-gate.toml");

    let defaults = serde_json::to_value(RawConfig::default()).unwrap();
    assert_valid(&schema, &defaults, "the built-in defaults");
    let mut keys = 0;
    compare_defaults(&schema_doc, &defaults, "", &mut keys);
    println!("config keys with their defaults: {keys}");
    assert_eq!(keys, 63);
}

#[test]
fn configs_the_gate_refuses_the_schema_refuses() {
    let schema = schema_file("schemas/config.schema.json");
    let good = [
        "",
        "listen = \"[::1]:8000\"",
        "admin_listen = \"0.0.0.0:9100\"",
        "[audit]\nsync = \"interval\"\nrotate_bytes = 4096\nrotate_interval_ms = 0",
        "[approvals]\nmax_ttl = \"1h 30m\"\nclock_skew = \"1.5s\"\nsingle_use = true",
        "[log]\nformat = \"json\"\nlevel = \"ecl_gate=debug\"",
        "shutdown_grace_ms = 0",
        "[escalations]\nnotify = \"\"\nqueue_capacity = 1",
        "[auth]\nmethods = [\"jwt\"]\n[auth.jwt]\nissuer = \"https://kubernetes.default.svc\"\naudience = \"ecl-gate\"\njwks_file = \"/etc/ecl-gate/jwks.json\"",
        "[auth.jwt.keys.k1]\nfile = \"k1.pem\"\nalg = \"ES256\"",
        "[[bindings]]\ncaller = \"anonymous\"\nprofiles = [\"example@1.*\"]\nprincipals = [\"agent:*\", \"{caller}\"]",
        "[listen_tls]\ncert_file = \"gate.pem\"\nkey_file = \"gate.key\"\nclient_ca_file = \"agents-ca.pem\"\n[auth]\nmethods = [\"mtls\"]",
        "[listen_tls]\ncert_file = \"gate.pem\"\nkey_file = \"gate.key\"\nclient_ca_file = \"agents-ca.pem\"\n[auth]\nmethods = [\"mtls\", \"jwt\"]\n[auth.jwt]\nissuer = \"https://kubernetes.default.svc\"\naudience = \"ecl-gate\"\njwks_file = \"/etc/ecl-gate/jwks.json\"",
        "[approvals]\nsingle_use = true\nledger = \"postgres://gate@db:5432/ecl?sslmode=require\"",
    ];
    for text in good {
        config_loads(text).unwrap_or_else(|err| panic!("gate refuses `{text}`: {err}"));
        assert_valid(&schema, &toml_to_json(text), text);
    }
    let bad = [
        "lisen = \"127.0.0.1:8000\"",
        "listen = \"localhost:8000\"",
        "listen = 8000",
        "mode = \"proxy\"",
        "profiles_root = \"\"",
        "max_body_bytes = 0",
        "max_body_bytes = 67108865",
        "body_timeout_ms = 0",
        "header_timeout_ms = \"10\"",
        "max_header_bytes = 1024",
        "max_in_flight = 0",
        "max_connections = 1000001",
        "shutdown_grace_ms = 600001",
        "[audit]\npath = \"  \"",
        "[audit]\nsync = \"sometimes\"",
        "[audit]\nsync_interval_ms = 0",
        "[audit]\nrotate_bytes = 100",
        "[audit]\nrotate_interval_ms = 10",
        "[audit]\nkeep = 3",
        "[approvals]\nmax_ttl = \"one hour\"",
        "[approvals]\nclock_skew = \"30\"",
        "[approvals]\nsingle_use = true\nused_path = \"\"",
        "[approvals]\nsingle_use = true\nledger = \"mysql://db/ecl\"",
        "[approvals]\nledger_pool_size = 0",
        "[approvals]\nledger_timeout_ms = 5",
        "[approvals.keys.k1]\npublic_key = \"x\"\nfile = \"k1.pub\"",
        "[approvals.keys.k1]",
        "[approvals.keys.k1]\npem = \"x\"",
        "[log]\nformat = \"xml\"",
        "[log]\ninclude_args = \"yes\"",
        "[metrics]\nenabled = true",
        "[escalations]\nnotify = \"ftp://approver/x\"",
        "[escalations]\nqueue_capacity = 0",
        "[escalations]\ntimeout_ms = 600001",
        "[listen_tls]\nkey_file = \"gate.key\"",
        "[listen_tls]\ncert_file = \"gate.pem\"",
        "[listen_tls]\ncert_file = \"gate.pem\"\nkey_file = \"gate.key\"\nreload_interval_ms = 10",
        "[auth]\nmethods = []",
        "[auth]\nmethods = [\"none\", \"jwt\"]",
        "[auth]\nmethods = [\"jwt\", \"jwt\"]\n[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"j.json\"",
        "[listen_tls]\ncert_file = \"gate.pem\"\nkey_file = \"gate.key\"\nclient_ca_file = \"agents-ca.pem\"\n[auth]\nmethods = [\"mtls\", \"none\"]",
        "[tls]\nreload_interval_ms = 10",
        "[auth]\nmethods = [\"jwt\"]",
        "[auth]\nmethods = [\"jwt\"]\n[auth.jwt]\nissuer = \"i\"\naudience = \"\"\njwks_file = \"j.json\"",
        "[auth.jwt]\nclock_skew = \"soon\"",
        "[auth.jwt]\nmax_token_bytes = 100",
        "[auth.jwt.keys.k1]\nfile = \"k1.pem\"\nalg = \"HS256\"",
        "[[bindings]]\ncaller = \"x\"\nprofiles = []",
        "[[bindings]]\ncaller = \"x\"\nprofiles = [\"noversion\"]",
        "[[bindings]]\ncaller = \"\"\nprofiles = [\"a@1\"]",
        "[[bindings]]\ncaller = \"x\"\nprofiles = [\"a@1\"]\nprincipals = []",
        "[[bindings]]\ncaller = \"x\"\nprofile = [\"a@1\"]",
    ];
    for text in bad {
        assert!(config_loads(text).is_err(), "the gate accepts `{text}`");
        assert!(
            !errors(&schema, &toml_to_json(text)).is_empty(),
            "the schema accepts `{text}`, which the gate refuses"
        );
    }
    println!(
        "configs: {} accepted by both, {} refused by both",
        good.len(),
        bad.len()
    );
    assert_eq!((good.len(), bad.len()), (14, 52));
}

#[test]
// An upstream's client certificate: both files or neither, and only towards https://. The gate
// refuses the same (src/config/tests.rs); proxy configurations need key files to load, so the
// schema is checked on its own here.
fn upstream_client_certificates_in_the_config_schema() {
    let schema = schema_file("schemas/config.schema.json");
    let proxy = |url: &str, keys: &str| {
        toml_to_json(&format!(
            "mode = \"proxy\"\n[grants]\nsigning_key = \"grant.key\"\n[upstreams.\"email.send\"]\nurl = \"{url}\"\n{keys}"
        ))
    };
    let both = "client_cert = \"gate.crt\"\nclient_key = \"gate.key\"";
    assert_valid(
        &schema,
        &proxy("https://tool/send", both),
        "both files, https",
    );
    assert_valid(&schema, &proxy("http://tool/send", ""), "neither, http");
    for (url, keys) in [
        ("https://tool/send", "client_cert = \"gate.crt\""),
        ("https://tool/send", "client_key = \"gate.key\""),
        ("http://tool/send", both),
    ] {
        assert!(
            !errors(&schema, &proxy(url, keys)).is_empty(),
            "the schema accepts `{keys}` for `{url}`"
        );
    }
}
