//! The deploy wiring (Dockerfile, compose, Kubernetes) checked without a Docker engine or a
//! cluster: every YAML parses, and images, ports, env names, keys and network boundaries agree
//! with the code and with each other.

// figment's own error type is large; the closures only pass it through.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ecl_gate::config::{figment, Config, RawConfig};
use ecl_gate::decision::{decide, Attempt, Context};
use ecl_gate::profile::ProfileStore;
use ecl_gate::proxy::tools_without_upstream;
use figment::Jail;
use serde_yaml::Value as Yaml;

use crate::common::ValueExt as _;
use crate::demo_tool;

/// The image every deploy file runs, as the Dockerfile's header builds it.
const IMAGE: &str = "ecl-gate:local";
const GATE_PORT: u16 = 8000;
const TOOL_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value: Yaml = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            // Resolve `<<: *anchor` merge keys, as compose does.
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
        })
        .filter(|doc: &Yaml| !doc.is_null())
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn s<'a>(value: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(value, |v, key| &v[*key])
}

fn str_of(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, found {value:?}"))
}

fn seq(value: &Yaml) -> &[Yaml] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_yaml_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&root().join("deploy"), &mut files);
    let yamls: Vec<_> = files
        .iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    assert!(yamls.len() >= 9, "{yamls:?}");
    for path in yamls {
        let docs = yaml_docs(path);
        assert!(!docs.is_empty(), "{} is empty", path.display());
        if path.starts_with(deploy("k8s")) {
            for doc in &docs {
                assert!(doc["apiVersion"].is_string(), "{}: {doc:?}", path.display());
                assert!(doc["kind"].is_string(), "{}: {doc:?}", path.display());
            }
        }
    }
}

#[test]
fn the_dockerfile_is_multi_stage_slim_non_root_with_port_and_healthcheck() {
    let text = read(&root().join("Dockerfile"));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let from: Vec<_> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    assert!(from.last().unwrap().contains("slim"), "{from:?}");
    let user = lines.iter().find(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    let expose = lines.iter().find(|l| l.starts_with("EXPOSE ")).unwrap();
    assert!(
        expose
            .split_whitespace()
            .any(|p| p == GATE_PORT.to_string()),
        "{expose}"
    );
    assert!(
        expose.split_whitespace().any(|p| p == "9000"),
        "admin port: {expose}"
    );
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK")));
    // The health check asks the admin listener for readiness, not just for an open port, with
    // the binary itself (the image has no curl; tests/it/cli.rs runs the same probe).
    assert!(
        text.contains(r#"CMD ["/usr/local/bin/ecl-gate", "probe", "--timeout", "2s", "http://127.0.0.1:9000/readyz"]"#),
        "{text}"
    );
    assert!(text.contains("ECL_ADMIN_LISTEN=0.0.0.0:9000"));
    assert!(text.contains(&format!("docker build -t {IMAGE} .")));
    // The binaries compose and Kubernetes start are the ones built and copied.
    assert!(text.contains("--bin ecl-gate --example demo_tool"));
    assert!(text.contains("/usr/local/bin/"));
    assert!(text.contains(&format!("ECL_LISTEN=0.0.0.0:{GATE_PORT}")));
    // The image's environment names real config keys.
    let env: Vec<(String, String)> = dockerfile_env(&text);
    assert!(env.len() >= 4);
    check_gate_env(&env, None);
    // Keys and build output never enter the build context.
    let ignore = read(&root().join(".dockerignore"));
    for pattern in ["target/", ".git/", "keys/", "**/*.key"] {
        assert!(ignore.lines().any(|l| l == pattern), "{pattern}");
    }
}

/// `ENV A=b \ C=d` pairs of the Dockerfile's runtime stage.
fn dockerfile_env(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    let runtime = joined.rsplit("FROM ").next().unwrap();
    runtime
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Loads `gate_toml` with `env` (as the container would see it) and validates it fully, with
/// the key and secret files it names replaced by test ones. Returns the validated config.
fn check_gate_env(env: &[(String, String)], gate_toml: Option<&Path>) -> Option<Config> {
    let mut config = None;
    Jail::expect_with(|jail| {
        // Every ECL_* name must be a config key (an unknown one stops the gate at start).
        for (key, value) in env {
            jail.set_env(key, value);
        }
        let file = gate_toml.map(|p| {
            let text = read(p);
            jail.create_file("gate.toml", &text).unwrap();
            PathBuf::from("gate.toml")
        });
        let raw: RawConfig = figment(file.as_deref())
            .extract()
            .map_err(|e| format!("env {env:?}: {e}"))?;
        if gate_toml.is_none() {
            return Ok(());
        }
        // Point the files the container would have mounted at stand-ins, then validate all.
        let key_pem = {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
            KeypairBytes {
                secret_key: [9; 32],
                public_key: None,
            }
            .to_pkcs8_pem(Default::default())
            .unwrap()
        };
        jail.create_file("grant.key", &key_pem)?;
        jail.create_file("token", "t0ken\n")?;
        let public_pem = {
            use ed25519_dalek::pkcs8::EncodePublicKey;
            ed25519_dalek::SigningKey::from_bytes(&[8; 32])
                .verifying_key()
                .to_public_key_pem(Default::default())
                .unwrap()
        };
        jail.create_file("approver.pub", &public_pem)?;
        let mut raw = raw;
        raw.grants.signing_key = Some(jail.directory().join("grant.key"));
        if raw.escalations.signing_key.is_some() {
            raw.escalations.signing_key = Some(jail.directory().join("grant.key"));
        }
        for key in raw.approvals.keys.values_mut() {
            if key.file.is_some() {
                key.file = Some(jail.directory().join("approver.pub"));
            }
        }
        for upstream in raw.upstreams.values_mut() {
            for value in upstream.headers.values_mut() {
                if let ecl_gate::config::proxy::RawHeaderValue::File(file) = value {
                    file.file = jail.directory().join("token");
                }
            }
        }
        config = Some(raw.validate().map_err(|e| e.to_string())?);
        Ok(())
    });
    config
}

fn env_pairs(service_env: &Yaml) -> Vec<(String, String)> {
    match service_env {
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (str_of(k).to_owned(), value)
            })
            .collect(),
        // Kubernetes: [{name, value}], values from secrets count as set.
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let value = item["value"].as_str().unwrap_or("from-a-secret").to_owned();
                (str_of(&item["name"]).to_owned(), value)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Compose `${VAR:-default}` → `default`, as compose would substitute with VAR unset.
fn substitute(value: &str) -> String {
    let mut out = value.to_owned();
    while let Some(start) = out.find("${") {
        let end = start + out[start..].find('}').unwrap();
        let inner = &out[start + 2..end];
        let default = inner.split_once(":-").map_or("", |(_, d)| d).to_owned();
        out.replace_range(start..=end, &default);
    }
    out
}

/// The demo tool's environment names are the ones it reads.
fn check_tool_env(env: &[(String, String)]) {
    let known = [
        demo_tool::ENV_LISTEN,
        demo_tool::ENV_PUBKEY,
        demo_tool::ENV_AUDIENCE,
        demo_tool::ENV_NAME,
        demo_tool::ENV_API_KEY,
    ];
    for (key, _) in env {
        assert!(
            known.contains(&key.as_str()),
            "demo tool does not read `{key}`"
        );
    }
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(port_of(get(demo_tool::ENV_LISTEN).unwrap()), TOOL_PORT);
    assert!(get(demo_tool::ENV_PUBKEY).unwrap().ends_with("grant.pub"));
    assert_eq!(get(demo_tool::ENV_AUDIENCE), Some("demo-tool"));
    assert_eq!(get(demo_tool::ENV_NAME), Some("demo.echo"));
    assert!(get(demo_tool::ENV_API_KEY).is_some());
}

/// The gate config routes `demo.echo` to the tool, with the tool's audience, on the tool port.
fn check_route(config: &Config, host: &str) {
    let proxy = config.proxy.as_ref().expect("proxy mode");
    let upstream = &proxy.upstreams["demo.echo"];
    assert_eq!(upstream.url.host(), Some(host));
    assert_eq!(upstream.url.port_u16(), Some(TOOL_PORT));
    assert_eq!(upstream.audience, "demo-tool");
    assert_eq!(config.listen.port(), GATE_PORT);
}

/// Every deploy copy of the demo profile is the same, every tool it allows has an upstream,
/// and the compose agent's requests decide as the demo says they do.
#[test]
fn the_demo_profile_and_requests_decide_as_documented() {
    let original = read(&deploy("compose/profiles/demo/1.0.0.json"));
    for copy in ["k8s/sidecar", "k8s/gateway"] {
        assert_eq!(
            read(&deploy(&format!("{copy}/profiles/demo/1.0.0.json"))),
            original,
            "{copy} has a different demo profile"
        );
    }
    let store = ProfileStore::new(deploy("compose/profiles"));
    let context = Context::new(Default::default());
    for (file, expected) in [("allow.json", "ALLOW"), ("deny.json", "DENY")] {
        let bytes = std::fs::read(deploy(&format!("compose/agent/{file}"))).unwrap();
        let request = ecl_gate::request::decode(&bytes).unwrap();
        let profile = store.get(&request.profile_id, &request.profile_version);
        let decision = decide(
            Attempt::Request {
                request: &request,
                profile: &profile,
            },
            &context,
            &ecl_gate::caller::Caller::anonymous(),
            std::time::SystemTime::now(),
        );
        assert_eq!(
            decision.decision_type.as_str(),
            expected,
            "{file}: {decision:?}"
        );
    }
}

#[test]
fn compose_puts_the_tool_on_an_internal_network_only_the_gate_joins() {
    let compose = &yaml_docs(&deploy("compose/compose.yaml"))[0];
    let services = &compose["services"];
    let networks_of = |service: &str| -> BTreeSet<String> {
        seq(&services[service]["networks"])
            .iter()
            .map(|n| str_of(n).to_owned())
            .collect()
    };
    assert_eq!(
        s(compose, &["networks", "tools", "internal"]),
        &Yaml::Bool(true)
    );
    assert_eq!(
        networks_of("demo-tool"),
        BTreeSet::from(["tools".to_owned()])
    );
    assert_eq!(
        networks_of("gate"),
        BTreeSet::from(["agents".to_owned(), "tools".to_owned()])
    );
    assert_eq!(networks_of("agent"), BTreeSet::from(["agents".to_owned()]));
    for (name, service) in services.as_mapping().unwrap() {
        let name = str_of(name);
        if name != "gate" && name != "demo-tool" {
            assert!(
                !networks_of(name).contains("tools"),
                "{name} joins the tools network"
            );
        }
        // No published ports: nothing reaches the gate or the tool from the host by accident.
        // The one exception: the approval inbox, on the host's loopback, for approvers.
        if name == "approver" {
            let ports: Vec<&str> = seq(&service["ports"]).iter().map(str_of).collect();
            assert_eq!(ports, ["127.0.0.1:8300:8300"]);
        } else {
            assert!(service["ports"].is_null(), "{name} publishes ports");
        }
    }
    assert_eq!(str_of(&services["keys"]["network_mode"]), "none");

    // Images: ours everywhere but the stand-in agent, built from the repository's Dockerfile.
    for name in ["keys", "gate", "demo-tool", "approver"] {
        assert_eq!(str_of(&services[name]["image"]), IMAGE, "{name}");
    }
    let build = &compose["x-image"]["build"];
    assert_eq!(
        deploy("compose")
            .join(str_of(&build["context"]))
            .join(str_of(&build["dockerfile"]))
            .canonicalize()
            .unwrap(),
        root().join("Dockerfile").canonicalize().unwrap()
    );
    assert_eq!(
        seq(&services["demo-tool"]["entrypoint"])[0].as_str(),
        Some("/usr/local/bin/demo_tool")
    );

    // The gate: its env names are config keys, its config validates, its route is the tool.
    // The image's ENV first, the service's environment over it.
    let mut gate_env = dockerfile_env(&read(&root().join("Dockerfile")));
    gate_env.extend(
        env_pairs(&services["gate"]["environment"])
            .into_iter()
            .map(|(k, v)| (k, substitute(&v))),
    );
    let config = check_gate_env(&gate_env, Some(&deploy("compose/gate.toml"))).unwrap();
    check_route(&config, "demo-tool");
    check_stop_and_ledger(
        &config,
        &services["gate"]["stop_grace_period"],
        "compose gate",
    );
    // The admin listener stays on the gate's loopback: the agents' network never reaches it
    // (the image's HEALTHCHECK runs inside the container).
    assert!(
        config.admin_listen.ip().is_loopback(),
        "{}",
        config.admin_listen
    );
    for (name, service) in services.as_mapping().unwrap() {
        check_compose_resources(str_of(name), service);
    }
    assert!(
        seq(&services["gate"]["volumes"])
            .iter()
            .any(|v| str_of(v) == "./gate.toml:/etc/ecl-gate/ecl-gate.toml:ro"),
        "the gate mounts its config where ECL_CONFIG points"
    );
    // The grant key volume is mounted by the key maker and the gate, never the tool or agent.
    for (name, service) in services.as_mapping().unwrap() {
        let mounts_key = seq(&service["volumes"])
            .iter()
            .any(|v| str_of(v).starts_with("gate-key:"));
        let name = str_of(name);
        assert_eq!(mounts_key, name == "gate" || name == "keys", "{name}");
        // The approver's token key: only the key maker and the approver.
        let mounts_approver_key = seq(&service["volumes"])
            .iter()
            .any(|v| str_of(v).starts_with("approver-key:"));
        assert_eq!(
            mounts_approver_key,
            name == "approver" || name == "keys",
            "{name}"
        );
    }
    // The gate reports escalations to the approver's agent-facing port, which the approver
    // serves, and trusts the approver's key.
    let escalations = config.escalations.as_ref().unwrap();
    assert_eq!(
        escalations.url.to_string(),
        "http://approver:8301/v1/notifications"
    );
    let approver_env = env_pairs(&services["approver"]["environment"]);
    let approver_get = |name: &str| {
        approver_env
            .iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(approver_get("ECL_APPROVER_AGENT_LISTEN"), "0.0.0.0:8301");
    assert_eq!(
        approver_get("ECL_APPROVER_GATE_KEYS"),
        format!("{}=/run/approver-pub/gate-notify.pub", escalations.kid)
    );
    assert!(config
        .approvals
        .keys
        .contains_key(&approver_get("ECL_APPROVER_KID")));
    // The tool's credential reaches the gate and the tool, never the agent.
    let gate_token = gate_env
        .iter()
        .find(|(k, _)| k == "DEMO_TOOL_TOKEN")
        .unwrap();
    let tool_env: Vec<(String, String)> = env_pairs(&services["demo-tool"]["environment"])
        .into_iter()
        .map(|(k, v)| (k, substitute(&v)))
        .collect();
    check_tool_env(&tool_env);
    let tool_key = tool_env
        .iter()
        .find(|(k, _)| k == demo_tool::ENV_API_KEY)
        .unwrap();
    assert_eq!(gate_token.1, tool_key.1);
    let agent_env = env_pairs(&services["agent"]["environment"]);
    assert!(
        agent_env.iter().all(|(k, _)| k.ends_with("_URL")),
        "{agent_env:?}"
    );
    let get = |name: &str| agent_env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    assert_eq!(
        get("GATE_URL"),
        format!("http://gate:{GATE_PORT}/v1/execute")
    );
    assert_eq!(
        get("TOOL_URL"),
        config.proxy.unwrap().upstreams["demo.echo"].url.to_string()
    );
    let script = read(&deploy("compose/agent/agent.sh"));
    assert!(script.contains("/agent/allow.json") && script.contains("/agent/deny.json"));
}

/// All containers of a pod template: regular and init (native sidecars).
fn containers(pod_spec: &Yaml) -> Vec<&Yaml> {
    seq(&pod_spec["initContainers"])
        .iter()
        .chain(seq(&pod_spec["containers"]))
        .collect()
}

fn docs_in(dir: &str) -> Vec<Yaml> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    files_under(&deploy(dir), &mut files);
    for file in files {
        if file.extension().and_then(|e| e.to_str()) == Some("yaml") {
            out.extend(yaml_docs(&file));
        }
    }
    out
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} `{name}`"))
}

/// Checks one wiring directory: the kustomization's generated objects match what the pods
/// mount; the grant key Secret is mounted only into gate containers; env names, ports and
/// images agree with the code.
fn check_k8s(dir: &str, gate_pod: &str) -> (Vec<Yaml>, Config) {
    let docs = docs_in(dir);
    let kustomization = find_kustomization(&docs);
    let generated: BTreeSet<String> = ["configMapGenerator", "secretGenerator"]
        .iter()
        .flat_map(|g| seq(&kustomization[*g]))
        .map(|g| str_of(&g["name"]).to_owned())
        .collect();
    for resource in seq(&kustomization["resources"]) {
        assert!(deploy(dir).join(str_of(resource)).is_file(), "{resource:?}");
    }
    // Generated from files in this directory (kustomize refuses files outside it).
    for generator in ["configMapGenerator", "secretGenerator"] {
        for item in seq(&kustomization[generator]) {
            for file in seq(&item["files"]) {
                let source = str_of(file).rsplit('=').next().unwrap();
                assert!(!source.contains(".."), "{source}");
                if !source.starts_with("keys/") {
                    assert!(deploy(dir).join(source).is_file(), "{source}");
                }
            }
        }
    }

    let mut gate_config = None;
    for doc in docs.iter().filter(|d| {
        matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet"))
            // The example database is checked on its own (k8s_gateway_scales_out_…).
            && d["metadata"]["name"].as_str() != Some("ecl-postgres")
    }) {
        let name = str_of(&doc["metadata"]["name"]);
        let pod = &doc["spec"]["template"]["spec"];
        assert_ne!(pod["shareProcessNamespace"], Yaml::Bool(true), "{name}");
        assert_eq!(
            pod["automountServiceAccountToken"],
            Yaml::Bool(false),
            "{name}"
        );
        assert_eq!(pod["enableServiceLinks"], Yaml::Bool(false), "{name}");
        let labels = &doc["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            &doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            &labels["app.kubernetes.io/name"]
        );
        let volumes = seq(&pod["volumes"]);
        for volume in volumes {
            for reference in [
                &volume["configMap"]["name"],
                &volume["secret"]["secretName"],
            ] {
                if let Some(reference) = reference.as_str() {
                    assert!(
                        generated.contains(reference),
                        "{name}: `{reference}` is not generated"
                    );
                }
            }
        }
        let secret_volume = |secret: &str| {
            volumes
                .iter()
                .find(|v| v["secret"]["secretName"].as_str() == Some(secret))
                .map(|v| str_of(&v["name"]).to_owned())
        };
        let key_volume = secret_volume("ecl-grant-key");
        for container in containers(pod) {
            let container_name = str_of(&container["name"]);
            let is_gate = container_name == "ecl-gate";
            let mounts: Vec<&str> = seq(&container["volumeMounts"])
                .iter()
                .map(|m| str_of(&m["name"]))
                .collect();
            let mounts_key = key_volume.as_deref().is_some_and(|v| mounts.contains(&v));
            assert_eq!(
                mounts_key, is_gate,
                "{name}/{container_name} and the grant key"
            );
            let sc = &container["securityContext"];
            assert_eq!(
                sc["allowPrivilegeEscalation"],
                Yaml::Bool(false),
                "{container_name}"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"],
                Yaml::Bool(true),
                "{container_name}"
            );
            check_k8s_resources(&format!("{name}/{container_name}"), &container["resources"]);
            let env = env_pairs(&container["env"]);
            // Secrets read into env must be generated too.
            for item in seq(&container["env"]) {
                if let Some(secret) = item["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    assert!(
                        generated.contains(secret),
                        "{name}: `{secret}` is not generated"
                    );
                }
            }
            let image = str_of(&container["image"]);
            if container_name == "audit-shipper" {
                // Same image, reads the audit volume only, holds no key or tool secret.
                assert_eq!(image, IMAGE);
                assert_eq!(
                    seq(&container["args"])
                        .iter()
                        .take(2)
                        .map(str_of)
                        .collect::<Vec<_>>(),
                    ["audit", "ship"]
                );
                for mount in seq(&container["volumeMounts"]) {
                    assert_eq!(str_of(&mount["name"]), "audit");
                    assert_eq!(mount["readOnly"], Yaml::Bool(true));
                }
                assert!(env.iter().all(|(k, _)| k == "PGPASSWORD"), "{env:?}");
                continue;
            }
            if is_gate {
                assert_eq!(name, gate_pod);
                assert_eq!(image, IMAGE);
                assert_eq!(
                    seq(&container["ports"])[0]["containerPort"].as_u64(),
                    Some(u64::from(GATE_PORT))
                );
                assert_eq!(
                    container["restartPolicy"].as_str().is_some(),
                    dir.ends_with("sidecar")
                );
                // The image's ENV first, the container's env over it (Kubernetes' order); env
                // wins over the file, so the container's ECL_LISTEN decides the address.
                // The service links come first, as the kubelet sets them; they must load even
                // where `enableServiceLinks: false` is forgotten.
                let mut env_all = dockerfile_env(&read(&root().join("Dockerfile")));
                env_all.extend(service_links(&docs));
                env_all.extend(env);
                let env = env_all;
                let config =
                    check_gate_env(&env, Some(&deploy(&format!("{dir}/gate.toml")))).unwrap();
                assert_eq!(config.listen.port(), GATE_PORT);
                let config_mount = seq(&container["volumeMounts"])
                    .iter()
                    .find(|m| m["mountPath"].as_str() == Some("/etc/ecl-gate"))
                    .unwrap();
                assert!(env_pairs(&container["env"])
                    .contains(&("ECL_CONFIG".into(), "/etc/ecl-gate/ecl-gate.toml".into())));
                assert!(str_of(&config_mount["name"]).contains("config"));
                check_stop_and_ledger(&config, &pod["terminationGracePeriodSeconds"], name);
                let audit_mount = seq(&container["volumeMounts"])
                    .iter()
                    .find(|m| str_of(&m["name"]) == "audit")
                    .unwrap();
                // A file ledger lives on the audit volume; a PostgreSQL one (the gateway) is
                // checked by k8s_gateway_scales_out_….
                if let ecl_gate::config::LedgerConfig::File(path) =
                    config.single_use_ledger.as_ref().unwrap()
                {
                    assert!(path.starts_with(str_of(&audit_mount["mountPath"])));
                }
                gate_config = Some(config);
            } else if name == "demo-tool" {
                assert_eq!(image, IMAGE);
                assert_eq!(
                    seq(&container["command"])[0].as_str(),
                    Some("/usr/local/bin/demo_tool")
                );
                check_tool_env(&env);
                assert_eq!(
                    seq(&container["ports"])[0]["containerPort"].as_u64(),
                    Some(u64::from(TOOL_PORT))
                );
            } else {
                // The agent: no secrets, no ECL_* or tool settings, only the gate's address and,
                // in the gateway, its projected token for the gate (checked below).
                assert!(env.iter().all(|(k, _)| k == "GATE_URL"), "{env:?}");
                assert!(seq(&container["volumeMounts"])
                    .iter()
                    .all(|m| m["name"].as_str() == Some("gate-token")));
            }
        }
    }
    let config = gate_config.expect("a gate container");
    // The tool Service is what the gate's upstream URL names, on the tool's port.
    let service = find(&docs, "Service", "demo-tool");
    assert_eq!(
        seq(&service["spec"]["ports"])[0]["port"].as_u64(),
        Some(u64::from(TOOL_PORT))
    );
    assert_eq!(
        seq(&service["spec"]["ports"])[0]["targetPort"].as_u64(),
        Some(u64::from(TOOL_PORT))
    );
    check_route(&config, "demo-tool");
    // Every tool the shipped profile allows has an upstream (what `serve` reports at start).
    let store = ProfileStore::new(deploy(&format!("{dir}/profiles")));
    assert_eq!(
        tools_without_upstream(&store, &config.proxy.as_ref().unwrap().upstreams),
        vec![]
    );
    (docs, config)
}

/// Issue 16: requests and limits for CPU and memory on every container.
fn check_k8s_resources(what: &str, resources: &Yaml) {
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !resources[kind][resource].is_null(),
                "{what}: no resources.{kind}.{resource}"
            );
        }
    }
}

fn check_compose_resources(service: &str, definition: &Yaml) {
    let resources = &definition["deploy"]["resources"];
    for (kind, resource) in [
        ("limits", "cpus"),
        ("limits", "memory"),
        ("reservations", "cpus"),
        ("reservations", "memory"),
    ] {
        assert!(
            !resources[kind][resource].is_null(),
            "{service}: no deploy.resources.{kind}.{resource}"
        );
    }
}

/// Issue 16: the orchestrator's grace period outlasts the gate's own (`shutdown_grace_ms`, then
/// recording cut-off calls), every upstream answers within the gate's grace, and approvals are
/// single use with the ledger beside the audit log, never under the read-only working directory.
fn check_stop_and_ledger(config: &Config, orchestrator_grace: &Yaml, what: &str) {
    let orchestrator = match orchestrator_grace {
        Yaml::Number(seconds) => Duration::from_secs(seconds.as_u64().unwrap()),
        Yaml::String(text) => humantime::parse_duration(text).unwrap(),
        other => panic!("{what}: no grace period for the orchestrator's stop: {other:?}"),
    };
    assert!(
        orchestrator > config.shutdown_grace + ecl_gate::proxy::SHUTDOWN_RECORDING,
        "{what}: {orchestrator:?} leaves the gate no time to record cut-off calls"
    );
    for (tool, upstream) in &config.proxy.as_ref().unwrap().upstreams {
        assert!(upstream.timeout <= config.shutdown_grace, "{what}: {tool}");
    }
    let ledger = config
        .single_use_ledger
        .as_ref()
        .expect("single use in proxy mode");
    if let ecl_gate::config::LedgerConfig::File(path) = ledger {
        assert!(
            path.starts_with("/var/lib/ecl-gate/audit"),
            "{what}: {ledger:?}"
        );
    }
}

/// NetworkPolicy ingress rules admitting `port`, each from a named peer (never everyone).
fn rules_for_port(policy: &Yaml, port: u16) -> Vec<&Yaml> {
    seq(&policy["spec"]["ingress"])
        .iter()
        .filter(|rule| {
            seq(&rule["ports"])
                .iter()
                .any(|p| p["port"].as_u64() == Some(u64::from(port)))
        })
        .collect()
}

/// Issue 16: the admin listener is bound beyond loopback for the kubelet; a policy must keep the
/// rest of the cluster off it.
fn check_admin_restricted(docs: &[Yaml], pod_labels: &Yaml, agent_labels: &Yaml) {
    let selects_pod = |policy: &&Yaml| {
        policy["spec"]["podSelector"]["matchLabels"]
            .as_mapping()
            .is_some_and(|m| m.iter().all(|(k, v)| &pod_labels[str_of(k)] == v))
    };
    let policies: Vec<&Yaml> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("NetworkPolicy"))
        .filter(selects_pod)
        .collect();
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy selects the gate's pods"
    );
    for policy in policies {
        assert!(seq(&policy["spec"]["policyTypes"])
            .iter()
            .any(|t| t.as_str() == Some("Ingress")));
        for rule in rules_for_port(policy, ADMIN_PORT) {
            for peer in seq(&rule["from"]) {
                let pods = peer["podSelector"]["matchLabels"].as_mapping().unwrap();
                assert!(!pods.is_empty(), "admin open to every pod: {peer:?}");
                assert!(peer["ipBlock"].is_null());
                // Agents never reach the admin listener.
                assert!(
                    !pods.iter().all(|(k, v)| &agent_labels[str_of(k)] == v),
                    "agents admitted to the admin port"
                );
            }
        }
        // An ingress rule without `ports` would admit its peers to every port.
        for rule in seq(&policy["spec"]["ingress"]) {
            assert!(!seq(&rule["ports"]).is_empty(), "{rule:?}");
        }
    }
}

/// What the kubelet injects into every pod for every Service in its namespace (when
/// `enableServiceLinks` is on, the default): `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`,
/// `{SVC}_SERVICE_PORT_{NAME}` per named port, `{SVC}_PORT` and `{SVC}_PORT_{N}_{PROTO}` with
/// `_PROTO`, `_PORT` and `_ADDR`.
fn service_links(docs: &[Yaml]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let services = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Service"));
    for (index, service) in services.enumerate() {
        let name = str_of(&service["metadata"]["name"])
            .to_ascii_uppercase()
            .replace('-', "_");
        let ip = format!("10.96.0.{}", 10 + index);
        let ports = seq(&service["spec"]["ports"]);
        for (i, port) in ports.iter().enumerate() {
            let number = port["port"].as_u64().unwrap().to_string();
            let proto = port["protocol"].as_str().unwrap_or("TCP").to_owned();
            let url = format!("{}://{ip}:{number}", proto.to_ascii_lowercase());
            if i == 0 {
                env.push((format!("{name}_SERVICE_HOST"), ip.clone()));
                env.push((format!("{name}_SERVICE_PORT"), number.clone()));
                env.push((format!("{name}_PORT"), url.clone()));
            }
            if let Some(port_name) = port["name"].as_str() {
                let port_name = port_name.to_ascii_uppercase().replace('-', "_");
                env.push((format!("{name}_SERVICE_PORT_{port_name}"), number.clone()));
            }
            let prefix = format!("{name}_PORT_{number}_{proto}");
            env.push((prefix.clone(), url));
            env.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
            env.push((format!("{prefix}_PORT"), number.clone()));
            env.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    env
}

/// The gateway example names its Service `ecl-gate`, so every pod started after it gets
/// `ECL_GATE_*` variables; the gate refused them as unknown keys and crash-looped on restart.
#[test]
fn the_real_binary_starts_with_kubernetes_service_links_and_still_refuses_a_typo() {
    let links = service_links(&docs_in("k8s/gateway"));
    assert!(
        links
            .iter()
            .any(|(k, _)| k == "ECL_GATE_PORT_8000_TCP_ADDR"),
        "{links:?}"
    );
    let pairs: Vec<(&str, &str)> = links
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::cli::spawn_serve(dir.path(), &pairs);
    let body = ecl_gate::canonical::to_canonical(&crate::common::request(
        "k8s-1",
        "email.send",
        crate::common::email_args("bob@example.com", "hi"),
    ));
    let answer = crate::cli::post(&addr, &body);
    assert_eq!(answer["decision_type"].str(), "ALLOW", "{answer:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    let out = crate::common::gate_command()
        .arg("serve")
        .current_dir(dir.path())
        .env("ECL_LISTEN", "127.0.0.1:0")
        .env("ECL_ADMIN_LISTEN", "127.0.0.1:0")
        .envs(pairs.iter().copied())
        .env("ECL_AUDIT__SYNK", "never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synk"), "{err}");
    assert!(
        !err.contains("ECL_GATE"),
        "a service link was reported: {err}"
    );
}

fn find_kustomization(docs: &[Yaml]) -> &Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some("Kustomization"))
        .expect("a kustomization.yaml")
}

#[test]
fn k8s_sidecar_mounts_the_signing_key_into_the_gate_container_only() {
    let (docs, config) = check_k8s("k8s/sidecar", "agent");
    // The gate listens on the pod's loopback: nothing outside the pod reaches it.
    assert!(config.listen.ip().is_loopback());
    let agent = find(&docs, "Deployment", "agent");
    let pod = &agent["spec"]["template"]["spec"];
    let gate = seq(&pod["initContainers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("ecl-gate"))
        .expect("the gate is a native sidecar");
    assert_eq!(gate["restartPolicy"].as_str(), Some("Always"));
    let agent_container = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .unwrap();
    // Different users: the agent cannot read the gate's files even where paths overlap.
    assert_ne!(
        agent_container["securityContext"]["runAsUser"],
        gate["securityContext"]["runAsUser"]
    );
    let agent_env = env_pairs(&agent_container["env"]);
    assert_eq!(
        agent_env[0].1,
        format!("http://127.0.0.1:{GATE_PORT}/v1/execute")
    );
    assert_eq!(config.admin_listen.port(), ADMIN_PORT);
    let labels = &agent["spec"]["template"]["metadata"]["labels"];
    check_admin_restricted(&docs, labels, labels);
}

#[test]
fn k8s_gateway_admits_tool_ingress_from_gate_pods_only() {
    let (docs, _) = check_k8s("k8s/gateway", "ecl-gate");
    let gate = find(&docs, "StatefulSet", "ecl-gate");
    let gate_labels = &gate["spec"]["template"]["metadata"]["labels"];
    let tool = find(&docs, "Deployment", "demo-tool");
    let tool_labels = &tool["spec"]["template"]["metadata"]["labels"];

    let policy = find(&docs, "NetworkPolicy", "demo-tool-ingress-from-gate-only");
    let spec = &policy["spec"];
    // Selects the tool's pods and restricts their ingress ...
    for (key, value) in spec["podSelector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&tool_labels[str_of(key)], value);
    }
    assert!(seq(&spec["policyTypes"])
        .iter()
        .any(|t| t.as_str() == Some("Ingress")));
    // ... to one rule: from pods carrying the gate's labels, on the tool's port.
    let rules = seq(&spec["ingress"]);
    assert_eq!(rules.len(), 1);
    let from = seq(&rules[0]["from"]);
    assert_eq!(from.len(), 1);
    assert!(from[0]["namespaceSelector"].is_null() && from[0]["ipBlock"].is_null());
    for (key, value) in from[0]["podSelector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&gate_labels[str_of(key)], value);
    }
    let agent = find(&docs, "Deployment", "agent");
    let agent_labels = &agent["spec"]["template"]["metadata"]["labels"];
    assert_ne!(
        agent_labels["app.kubernetes.io/name"],
        gate_labels["app.kubernetes.io/name"]
    );
    assert_eq!(
        seq(&rules[0]["ports"])[0]["port"].as_u64(),
        Some(u64::from(TOOL_PORT))
    );

    // The gate's Service selects the gate pods on the gate port; agents use it.
    let service = find(&docs, "Service", "ecl-gate");
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&gate_labels[str_of(key)], value);
    }
    assert_eq!(
        seq(&service["spec"]["ports"])[0]["targetPort"].as_u64(),
        Some(u64::from(GATE_PORT))
    );
    let agent_env = env_pairs(&seq(&agent["spec"]["template"]["spec"]["containers"])[0]["env"]);
    assert_eq!(
        agent_env[0].1,
        format!("http://ecl-gate:{GATE_PORT}/v1/execute")
    );
    check_admin_restricted(&docs, gate_labels, agent_labels);
    // And the gate admits agents, by the label the agent pods carry.
    let gate_policy = find(&docs, "NetworkPolicy", "ecl-gate-ingress-from-agents");
    let from = &seq(&gate_policy["spec"]["ingress"])[0]["from"];
    for (key, value) in seq(from)[0]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&agent_labels[str_of(key)], value);
    }
}

#[test]
fn k8s_approver_overlay_keeps_the_inbox_from_agents_and_its_key_in_the_approver() {
    let docs = docs_in("k8s/approver");
    let kustomization = find_kustomization(&docs);
    assert!(seq(&kustomization["resources"])
        .iter()
        .any(|r| str_of(r) == "../gateway"));
    // The overlay's gate config validates and points at the approver's agent Service.
    let config = check_gate_env(&[], Some(&deploy("k8s/approver/gate.toml"))).unwrap();
    let escalations = config.escalations.as_ref().unwrap();
    assert_eq!(
        escalations.url.to_string(),
        "http://ecl-approver:8301/v1/notifications"
    );

    let approver = find(&docs, "Deployment", "ecl-approver");
    let pod = &approver["spec"]["template"]["spec"];
    let container = &seq(&pod["containers"])[0];
    assert_eq!(
        seq(&container["args"])
            .iter()
            .map(str_of)
            .collect::<Vec<_>>(),
        ["approver", "serve"]
    );
    let env = env_pairs(&container["env"]);
    let get = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    assert!(config.approvals.keys.contains_key(&get("ECL_APPROVER_KID")));
    assert!(get("ECL_APPROVER_GATE_KEYS").starts_with(&format!("{}=", escalations.kid)));
    assert_eq!(port_of(&get("ECL_APPROVER_AGENT_LISTEN")), 8301);
    assert_eq!(port_of(&get("ECL_APPROVER_LISTEN")), 8300);
    // The approver's signing key Secret: mounted by this pod; the gate gets only the notify key.
    let secrets: Vec<&str> = seq(&pod["volumes"])
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["ecl-approver-key"]);
    // The patch must name the gate as the gateway declares it (a StatefulSet since the fleet).
    let target = &seq(&kustomization["patches"])[0]["target"];
    find(
        &docs_in("k8s/gateway"),
        str_of(&target["kind"]),
        str_of(&target["name"]),
    );
    let patch = str_of(&seq(&kustomization["patches"])[0]["patch"]);
    assert!(
        patch.contains("ecl-notify-key") && !patch.contains("ecl-approver-key"),
        "{patch}"
    );
    let generated: Vec<&str> = seq(&kustomization["secretGenerator"])
        .iter()
        .map(|g| str_of(&g["name"]))
        .collect();
    assert_eq!(generated, ["ecl-approver-key", "ecl-notify-key"]);

    // The agents' Service exposes the wait port only; the inbox has its own Service.
    let agents = find(&docs, "Service", "ecl-approver");
    let ports: Vec<u64> = seq(&agents["spec"]["ports"])
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ports, [8301]);
    // NetworkPolicy: 8301 from the gate and agents; 8300 from the approver ingress only.
    let policy = find(&docs, "NetworkPolicy", "ecl-approver-ingress");
    for rule in seq(&policy["spec"]["ingress"]) {
        let port = seq(&rule["ports"])[0]["port"].as_u64().unwrap();
        let from: Vec<String> = seq(&rule["from"])
            .iter()
            .flat_map(|f| f["podSelector"]["matchLabels"].as_mapping().unwrap().keys())
            .map(|k| str_of(k).to_owned())
            .collect();
        match port {
            8301 => assert_eq!(from, ["app.kubernetes.io/name", "ecl-gate.io/agent"]),
            8300 => assert_eq!(
                from,
                ["ecl-gate.io/approver-ingress"],
                "agents must not reach the inbox"
            ),
            other => panic!("unexpected port {other}"),
        }
    }
}

/// Decides `file` (a compose agent request, its profile id optionally replaced) as `caller`
/// under `config`'s bindings, with the wiring's own profiles.
fn decide_as(
    config: &Config,
    profiles: &str,
    file: &str,
    profile_id: Option<&str>,
    caller: &str,
) -> String {
    let mut text = read(&deploy(&format!("compose/agent/{file}")));
    if let Some(id) = profile_id {
        text = text.replace("\"id\":\"demo\"", &format!("\"id\":\"{id}\""));
    }
    let request = ecl_gate::request::decode(text.as_bytes()).unwrap();
    let store = ProfileStore::new(deploy(profiles));
    let profile = store.get(&request.profile_id, &request.profile_version);
    let context = Context::new(Default::default()).with_bindings(config.bindings.clone());
    let caller = ecl_gate::caller::Caller {
        method: ecl_gate::caller::CallerMethod::Jwt,
        id: caller.into(),
        issuer: None,
    };
    let decision = decide(
        Attempt::Request {
            request: &request,
            profile: &profile,
        },
        &context,
        &caller,
        std::time::SystemTime::now(),
    );
    decision.reason.as_str().to_owned()
}

#[test]
// The compose demo authenticates its agent with nothing but the images: the key maker signs the
// agent's token, the gate verifies it, and bindings pin the agent to the demo profile.
fn compose_authenticates_its_agent_and_pins_its_profile() {
    let compose = &yaml_docs(&deploy("compose/compose.yaml"))[0];
    let services = &compose["services"];
    let mut gate_env = dockerfile_env(&read(&root().join("Dockerfile")));
    gate_env.extend(
        env_pairs(&services["gate"]["environment"])
            .into_iter()
            .map(|(k, v)| (k, substitute(&v))),
    );
    let config = check_gate_env(&gate_env, Some(&deploy("compose/gate.toml"))).unwrap();
    let jwt = config
        .auth
        .jwt
        .as_ref()
        .expect("the compose gate wants bearer tokens");
    // What the key maker signs is what the gate checks.
    let keys_script = seq(&services["keys"]["command"])[0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        keys_script.contains(&format!("--issuer {}", jwt.issuer)),
        "{keys_script}"
    );
    assert!(
        keys_script.contains(&format!("--audience {}", jwt.audience)),
        "{keys_script}"
    );
    assert!(
        keys_script.contains("--subject demo-agent"),
        "{keys_script}"
    );
    let key = &jwt.pem_keys[0];
    assert_eq!(key.file, PathBuf::from("/run/auth/agent.pub"));
    assert!(
        keys_script.contains(&format!("--kid {}", key.kid)),
        "{keys_script}"
    );
    // Who mounts what: the token goes to the agent only, the public key to the gate only.
    let mounts = |name: &str| -> Vec<String> {
        seq(&services[name]["volumes"])
            .iter()
            .map(|v| str_of(v).to_owned())
            .collect()
    };
    for (name, _) in services.as_mapping().unwrap() {
        let name = str_of(name);
        let token = mounts(name).iter().any(|v| v.starts_with("agent-token:"));
        assert_eq!(token, name == "agent" || name == "keys", "{name}");
        let public = mounts(name).iter().any(|v| v.starts_with("gate-auth:"));
        assert_eq!(public, name == "gate" || name == "keys", "{name}");
    }
    assert!(mounts("gate").contains(&"gate-auth:/run/auth:ro".to_owned()));
    assert!(mounts("agent").contains(&"agent-token:/run/token:ro".to_owned()));
    let script = read(&deploy("compose/agent/agent.sh"));
    assert!(script.contains("AUTH=@/run/token/authorization"));
    assert!(script.contains("CALLER_UNAUTHENTICATED") && script.contains("CALLER_NOT_PERMITTED"));
    // The bindings, decided: the agent's calls as before, another profile or caller refused.
    assert_eq!(
        decide_as(
            &config,
            "compose/profiles",
            "allow.json",
            None,
            "demo-agent"
        ),
        "OK"
    );
    assert_eq!(
        decide_as(&config, "compose/profiles", "deny.json", None, "demo-agent"),
        "CONSTRAINT_VIOLATION"
    );
    assert_eq!(
        decide_as(
            &config,
            "compose/profiles",
            "allow.json",
            Some("ops"),
            "demo-agent"
        ),
        "CALLER_NOT_PERMITTED"
    );
    assert_eq!(
        decide_as(
            &config,
            "compose/profiles",
            "allow.json",
            None,
            "another-agent"
        ),
        "CALLER_NOT_PERMITTED"
    );
}

#[test]
// The gateway authenticates agents by projected service-account tokens for audience
// `ecl-gate`, verified against the cluster's JWKS from a ConfigMap; bindings pin each
// service account to its profile.
fn k8s_gateway_authenticates_agents_by_service_account_tokens() {
    let (docs, config) = check_k8s("k8s/gateway", "ecl-gate");
    let jwt = config
        .auth
        .jwt
        .as_ref()
        .expect("the gateway wants bearer tokens");
    let agent = find(&docs, "Deployment", "agent");
    let pod = &agent["spec"]["template"]["spec"];
    let account = str_of(&pod["serviceAccountName"]);
    assert!(find(&docs, "ServiceAccount", account).is_mapping());
    let projected = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some("gate-token"))
        .expect("a projected token volume");
    let source = &seq(&projected["projected"]["sources"])[0]["serviceAccountToken"];
    assert_eq!(str_of(&source["audience"]), jwt.audience);
    assert!(source["expirationSeconds"].as_u64().unwrap() <= 3600);
    // The JWKS the gate reads is the ConfigMap the kustomization exports.
    let gate = find(&docs, "StatefulSet", "ecl-gate");
    let gate_pod = &gate["spec"]["template"]["spec"];
    let jwks_dir = jwt.jwks_file.as_ref().unwrap().parent().unwrap().to_owned();
    let mount = seq(&seq(&gate_pod["containers"])[0]["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(PathBuf::from) == Some(jwks_dir.clone()))
        .expect("the JWKS is mounted where jwks_file points");
    let volume = seq(&gate_pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let config_map = str_of(&volume["configMap"]["name"]);
    let kustomization = find_kustomization(&docs);
    let generator = seq(&kustomization["configMapGenerator"])
        .iter()
        .find(|g| str_of(&g["name"]) == config_map)
        .expect("the JWKS ConfigMap is generated");
    let file_name = jwt
        .jwks_file
        .as_ref()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        str_of(&seq(&generator["files"])[0]),
        format!("{file_name}=keys/jwks.json")
    );
    assert!(read(&deploy("k8s/gateway/kustomization.yaml"))
        .contains("kubectl get --raw /openid/v1/jwks > deploy/k8s/gateway/keys/jwks.json"));
    // The agent's service account is bound to the demo profile, and nobody else is.
    let caller = format!("system:serviceaccount:default:{account}");
    assert_eq!(
        decide_as(&config, "k8s/gateway/profiles", "allow.json", None, &caller),
        "OK"
    );
    assert_eq!(
        decide_as(
            &config,
            "k8s/gateway/profiles",
            "allow.json",
            Some("ops"),
            &caller
        ),
        "CALLER_NOT_PERMITTED"
    );
    assert_eq!(
        decide_as(
            &config,
            "k8s/gateway/profiles",
            "allow.json",
            None,
            "system:serviceaccount:default:default"
        ),
        "CALLER_NOT_PERMITTED"
    );
}

#[test]
// The sidecar needs no credentials on loopback: its binding pins the one profile.
fn k8s_sidecar_pins_its_profile() {
    let (_, config) = check_k8s("k8s/sidecar", "agent");
    assert!(config.auth.jwt.is_none());
    assert_eq!(
        decide_as(
            &config,
            "k8s/sidecar/profiles",
            "allow.json",
            None,
            "anonymous"
        ),
        "OK"
    );
    assert_eq!(
        decide_as(
            &config,
            "k8s/sidecar/profiles",
            "allow.json",
            Some("ops"),
            "anonymous"
        ),
        "CALLER_NOT_PERMITTED"
    );
}

#[test]
fn k8s_gateway_scales_out_with_one_chain_per_replica_a_shipper_and_a_shared_database() {
    let (docs, config) = check_k8s("k8s/gateway", "ecl-gate");
    let gate = find(&docs, "StatefulSet", "ecl-gate");
    let spec = &gate["spec"];
    let replicas = spec["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];

    // A volume per replica for the audit log, mounted where the log is; the stream is named
    // after the pod (a StatefulSet pod's hostname is its name).
    let claims = seq(&spec["volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    assert_eq!(str_of(&claims[0]["metadata"]["name"]), "audit");
    assert!(seq(&pod["volumes"])
        .iter()
        .all(|v| str_of(&v["name"]) != "audit"));
    let template = &config.audit.path_template;
    assert!(template.contains("{hostname}"), "{template}");
    let audit_dir = Path::new(template).parent().unwrap().to_str().unwrap();
    let gate_container = containers(pod)
        .into_iter()
        .find(|c| str_of(&c["name"]) == "ecl-gate")
        .unwrap();
    let mount = |container: &Yaml| {
        seq(&container["volumeMounts"])
            .iter()
            .find(|m| str_of(&m["name"]) == "audit")
            .map(|m| str_of(&m["mountPath"]).to_owned())
    };
    assert_eq!(mount(gate_container).as_deref(), Some(audit_dir));

    // The shipper follows exactly that directory into the database the ledger uses.
    let shipper = containers(pod)
        .into_iter()
        .find(|c| str_of(&c["name"]) == "audit-shipper")
        .expect("an audit-shipper beside the gate");
    assert_eq!(mount(shipper).as_deref(), Some(audit_dir));
    let args: Vec<&str> = seq(&shipper["args"]).iter().map(str_of).collect();
    assert_eq!(args.last().copied(), Some(audit_dir));
    let to = args[args.iter().position(|a| *a == "--to").unwrap() + 1];
    match &config.single_use_ledger {
        Some(ecl_gate::config::LedgerConfig::Postgres(settings)) => assert_eq!(settings.url, to),
        other => panic!("the gateway shares a PostgreSQL ledger, found {other:?}"),
    }
    // The database those URLs name is the example's Service, and it is marked as an example.
    let host = to.split('@').nth(1).unwrap().split(':').next().unwrap();
    let db_service = find(&docs, "Service", host);
    assert_eq!(
        seq(&db_service["spec"]["ports"])[0]["port"].as_u64(),
        Some(5432)
    );
    let postgres_yaml = read(&deploy("k8s/gateway/postgres.yaml"));
    assert!(
        postgres_yaml.starts_with("# EXAMPLE ONLY"),
        "postgres.yaml must say it is an example"
    );
    let db = find(&docs, "StatefulSet", host);
    assert_eq!(db["spec"]["replicas"].as_u64(), Some(1));

    // Voluntary disruptions take at most one replica at a time.
    let pdb = find(&docs, "PodDisruptionBudget", "ecl-gate");
    let min_available = pdb["spec"]["minAvailable"].as_u64().unwrap();
    assert!(min_available >= 1 && min_available < replicas);
    for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[str_of(key)], value);
    }

    // SIGTERM comes after preStop; in-flight requests get shutdown_grace_ms; the kubelet
    // waits for both before SIGKILL.
    let pre_stop = gate_container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000
            > pre_stop * 1000
                + (config.shutdown_grace + ecl_gate::proxy::SHUTDOWN_RECORDING).as_millis() as u64,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + shutdown_grace {:?}",
        config.shutdown_grace
    );
}
