// figment's own error type is large; these closures only pass it through.
#![allow(clippy::result_large_err)]

use figment::Jail;

use super::*;

fn load_in(jail: &Jail, file: Option<&str>) -> Result<Config, ConfigError> {
    let _ = jail;
    Config::from_figment(figment(file.map(Path::new)))
}

#[test]
fn defaults_are_valid_and_documented() {
    Jail::expect_with(|jail| {
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert_eq!(
            config.listen,
            "127.0.0.1:8000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.admin_listen.port(), 9000);
        assert_eq!(config.mode, Mode::Decide);
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.audit.sync, SyncMode::Always);
        Ok(())
    });
}

// Issue 16: one approval executed a proxied call once per re-send; single use is now the
// default wherever the gate executes calls, its ledger beside the audit log.
#[test]
fn single_use_defaults_by_mode_with_the_ledger_beside_the_audit_log() {
    Jail::expect_with(|jail| {
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert_eq!(file_ledger(&config), None, "decide mode executes nothing");
        jail.create_file("a.toml", "[audit]\npath = \"/var/log/ecl/{hostname}/audit.log\"\n[approvals]\nsingle_use = true\n")?;
        let config = load_in(jail, Some("a.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            file_ledger(&config),
            Some(PathBuf::from(
                "/var/log/ecl/{hostname}/used-approvals.jsonl"
            ))
        );
        jail.create_file(
            "b.toml",
            "[approvals]\nsingle_use = true\nused_path = \"/srv/ledger.jsonl\"\n",
        )?;
        let config = load_in(jail, Some("b.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            file_ledger(&config),
            Some(PathBuf::from("/srv/ledger.jsonl"))
        );
        assert!(!config.single_use_explicitly_off);
        jail.create_file(
            "c.toml",
            "[audit]\npath = \"/dev/null\"\n[approvals]\nsingle_use = true\n",
        )?;
        let err = load_in(jail, Some("c.toml")).unwrap_err().to_string();
        assert!(err.starts_with("invalid value for `approvals.used_path`: single use is on and `audit.path` is `/dev/null`"), "{err}");
        Ok(())
    });
}

#[test]
fn the_shipped_config_file_holds_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
    let from_file: RawConfig = Figment::from(Toml::file_exact(&path)).extract().unwrap();
    assert_eq!(from_file, RawConfig::default());
}

#[test]
fn environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "gate.toml",
            "listen = \"127.0.0.1:7000\"\n[audit]\nsync = \"interval\"\n",
        )?;
        jail.set_env("ECL_AUDIT__SYNC", "never");
        jail.set_env("ECL_MAX_BODY_BYTES", "2048");
        jail.set_env("ECL_CONFIG", "ignored-as-a-key.toml");
        let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.audit.sync, SyncMode::Never);
        assert_eq!(config.max_body_bytes, 2048);
        Ok(())
    });
}

#[test]
fn reference_environment_names_are_honoured() {
    Jail::expect_with(|jail| {
        jail.set_env("AUDIT_LOG_PATH", "/tmp/ref-{pid}.log");
        jail.set_env("PROFILES_ROOT", "/srv/profiles");
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert_eq!(config.audit.path_template, "/tmp/ref-{pid}.log");
        assert_eq!(config.profiles_root, PathBuf::from("/srv/profiles"));
        // ECL_* wins over the reference names.
        jail.set_env("ECL_AUDIT__PATH", "/tmp/ecl.log");
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert_eq!(config.audit.path_template, "/tmp/ecl.log");
        Ok(())
    });
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("ECL_AUDIT__SYNC", "sometimes", "audit.sync"),
        ("ECL_LISTEN", "localhost", "listen"),
        ("ECL_MODE", "proxy", "mode"),
        ("ECL_MAX_BODY_BYTES", "0", "max_body_bytes"),
        ("ECL_MAX_BODY_BYTES", "lots", "max_body_bytes"),
        ("ECL_AUDIT__SYNC_INTERVAL_MS", "0", "audit.sync_interval_ms"),
        ("ECL_AUDIT__ROTATE_BYTES", "4095", "audit.rotate_bytes"),
        ("ECL_AUDIT__ROTATE_BYTES", "-1", "audit.rotate_bytes"),
        (
            "ECL_AUDIT__ROTATE_INTERVAL_MS",
            "999",
            "audit.rotate_interval_ms",
        ),
        (
            "ECL_AUDIT__ROTATE_INTERVAL_MS",
            "hourly",
            "audit.rotate_interval_ms",
        ),
        ("ECL_LOG__FORMAT", "xml", "log.format"),
        ("ECL_ADMIN_LISTEN", "127.0.0.1:8000", "admin_listen"),
        ("ECL_TYPO", "1", "typo"),
    ];
    for &(key, value, named) in cases {
        Jail::expect_with(|jail| {
            jail.set_env(key, value);
            let err = load_in(jail, None).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains(named),
                "{key}={value}: `{err}` should name `{named}`"
            );
            Ok(())
        });
    }
}

#[test]
fn a_missing_explicit_file_is_an_error() {
    let err = Config::load(Some(Path::new("/nonexistent/ecl-gate.toml"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ecl-gate.toml"));
}

#[test]
fn rotation_is_off_by_default_and_set_from_file_or_environment() {
    Jail::expect_with(|jail| {
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert_eq!(
            (config.audit.rotate_bytes, config.audit.rotate_interval),
            (0, None)
        );
        jail.create_file(
            "gate.toml",
            "[audit]\nrotate_bytes = 1048576\nrotate_interval_ms = 3600000\n",
        )?;
        let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
        assert_eq!(config.audit.rotate_bytes, 1 << 20);
        assert_eq!(
            config.audit.rotate_interval,
            Some(Duration::from_secs(3600))
        );
        jail.set_env("ECL_AUDIT__ROTATE_BYTES", "4096");
        jail.set_env("ECL_AUDIT__ROTATE_INTERVAL_MS", "0");
        let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            (config.audit.rotate_bytes, config.audit.rotate_interval),
            (4096, None)
        );
        Ok(())
    });
}

/// Kubernetes injects these for every Service in the namespace; a Service named `ecl-gate`
/// (the gateway example's own) made the gate refuse to start and crash-loop.
#[test]
fn kubernetes_service_links_are_recognised_by_name_and_value() {
    let links = [
        ("ECL_GATE_SERVICE_HOST", "10.96.12.7"),
        ("ECL_GATE_SERVICE_PORT", "8000"),
        ("ECL_GATE_SERVICE_PORT_HTTP", "8000"),
        ("ECL_GATE_SERVICE_PORT_ADMIN_HTTP", "9000"),
        ("ECL_GATE_PORT", "tcp://10.96.12.7:8000"),
        ("ECL_GATE_PORT_8000_TCP", "tcp://10.96.12.7:8000"),
        ("ECL_GATE_PORT_8000_TCP_ADDR", "10.96.12.7"),
        ("ECL_GATE_PORT_8000_TCP_PORT", "8000"),
        ("ECL_GATE_PORT_8000_TCP_PROTO", "tcp"),
        ("ECL_SERVICE_HOST", "fd00::12"),
        ("ECL_PORT", "udp://[fd00::12]:53"),
        ("ECL_SERVICE_X_SERVICE_HOST", "10.0.0.1"),
        ("ECL_PORT_SERVICE_PORT_9000_SCTP_PORT", "9000"),
    ];
    for (name, value) in links {
        assert!(is_service_link(name, value), "{name}={value}");
    }
    let not_links = [
        // The gate's own keys, and typos of them, whatever their value.
        ("ECL_LISTEN", "0.0.0.0:8000"),
        ("ECL_AUDIT__SYNK", "never"),
        ("ECL_ADMIN_PORT", "9001"),
        ("ECL_GATE_PORT", "8000"),
        ("ECL_GATE_SERVICE_HOST", "gate.example"),
        ("ECL_GATE_SERVICE_PORT", "http"),
        ("ECL_GATE_PORT_8000_TCP", "tcp://10.96.12.7:9000"),
        ("ECL_GATE_PORT_8000_TCP_PORT", "9000"),
        ("ECL_GATE_PORT_8000_HTTP_ADDR", "10.96.12.7"),
        ("ECL_GATE_PORT_8000_TCP_PROTO", "udp"),
        ("ECL_gate_SERVICE_HOST", "10.0.0.1"),
        ("OTHER_SERVICE_HOST", "10.0.0.1"),
        ("ECL__SERVICE_HOST", "10.0.0.1"),
    ];
    for (name, value) in not_links {
        assert!(!is_service_link(name, value), "{name}={value}");
    }
}

#[test]
fn service_links_load_but_a_misspelt_key_beside_them_is_refused() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("ECL_GATE_SERVICE_HOST", "10.96.12.7");
        jail.set_env("ECL_GATE_PORT", "tcp://10.96.12.7:8000");
        jail.set_env("ECL_GATE_PORT_8000_TCP_ADDR", "10.96.12.7");
        jail.set_env("ECL_AUDIT__SYNC", "never");
        let config = Config::from_figment(figment(None)).expect("service links are ignored");
        assert_eq!(config.audit.sync, crate::audit::SyncMode::Never);
        jail.set_env("ECL_AUDIT__SYNK", "never");
        let err = Config::from_figment(figment(None)).unwrap_err().to_string();
        assert!(err.contains("unknown key `ECL_AUDIT__SYNK`"), "{err}");
        Ok(())
    });
}

/// Keys are named as the user wrote them: no figment profile prefix, the variable's own name
/// for the environment, quoted TOML keys where a tool name has a dot.
#[test]
fn errors_name_keys_as_written_and_in_words() {
    Jail::expect_with(|jail| {
        jail.create_file("gate.toml", "[audit]\nsynk = \"never\"\n")?;
        let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
        assert!(!err.contains("default."), "{err}");
        assert!(err.contains("unknown key `audit.synk` in `"), "{err}");
        jail.create_file("gate.toml", "max_body_bytes = \"x\"\n")?;
        let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
        assert!(
            err.contains("invalid value for `max_body_bytes` in `")
                && err.contains("found text `x`, expected a whole number, 0 or more"),
            "{err}"
        );

        jail.create_file(
            "proxy.toml",
            "mode = \"proxy\"\n[upstreams.\"email.send\"]\nurl = \"http://127.0.0.1:1/\"\nheaders.x = { env = \"A\", file = \"/k\" }\n",
        )?;
        let err = load_in(jail, Some("proxy.toml")).unwrap_err().to_string();
        assert!(
            err.contains("`upstreams.\"email.send\".headers.x`")
                && err.contains("give `env` or `file`, not both"),
            "{err}"
        );
        assert!(!err.contains("untagged"), "{err}");

        jail.set_env("ECL_MAX_BODY_BYTES", "-1");
        let err = load_in(jail, None).unwrap_err().to_string();
        assert!(
            err.contains("`ECL_MAX_BODY_BYTES` (environment; `max_body_bytes` in a config file)"),
            "{err}"
        );
        Ok(())
    });
}

/// The environment has no types: `ECL_AUDIT__ORIGIN=12345` reaches a text key as a number and
/// was refused ("expected a string"). It is the text it was; a fraction, which would not come
/// back as written, says how to quote it.
#[test]
fn text_keys_take_numbers_from_the_environment() {
    Jail::expect_with(|jail| {
        jail.set_env("ECL_AUDIT__ORIGIN", "12345");
        jail.set_env("ECL_AUDIT__CHECKPOINT_KEY", "");
        let raw: RawConfig = figment(None).extract().map_err(|e| e.to_string())?;
        assert_eq!(raw.audit.origin, "12345");
        jail.set_env("ECL_GRANTS__TTL", "30");
        let err = load_in(jail, None).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_none_or(|e| !e.contains("expected a string")),
            "{err:?}"
        );
        let raw: RawConfig = figment(None).extract().map_err(|e| e.to_string())?;
        assert_eq!(raw.grants.ttl, "30");
        jail.set_env("ECL_AUDIT__ORIGIN", "1.50");
        let err = load_in(jail, None).unwrap_err().to_string();
        assert!(err.contains("quote it"), "{err}");
        jail.set_env("ECL_AUDIT__ORIGIN", "\"1.50\"");
        let raw: RawConfig = figment(None).extract().map_err(|e| e.to_string())?;
        assert_eq!(raw.audit.origin, "1.50");
        Ok(())
    });
}

// A shell that exports the approver's and wait-approval's variables must still start a gate.
#[test]
fn approver_variables_are_not_gate_keys() {
    Jail::expect_with(|jail| {
        for name in APPROVER_VARIABLES {
            jail.set_env(name, "1");
        }
        let config = load_in(jail, None).map_err(|e| e.to_string())?;
        assert!(config.escalations.is_none());
        Ok(())
    });
}

// Only the approver's exact names are let through: a typo must stop the gate, named.
#[test]
fn a_misspelt_approver_variable_stops_the_gate() {
    Jail::expect_with(|jail| {
        jail.set_env("ECL_APPROVER_LISTEN", "0.0.0.0:8300");
        jail.set_env("ECL_APPROVER_LISTN", "0.0.0.0:8300");
        let err = load_in(jail, None).unwrap_err().to_string();
        assert!(err.contains("ECL_APPROVER_LISTN"), "{err}");
        assert!(!err.contains("ECL_APPROVER_LISTEN"), "{err}");
        Ok(())
    });
}

#[test]
fn escalations_need_a_signing_key_and_an_http_url() {
    Jail::expect_with(|jail| {
        jail.set_env(
            "ECL_ESCALATIONS__NOTIFY",
            "http://approver:8301/v1/notifications",
        );
        let err = load_in(jail, None).unwrap_err().to_string();
        assert!(err.contains("`escalations.signing_key`"), "{err}");
        assert!(err.contains("notifications are signed"), "{err}");
        jail.set_env("ECL_ESCALATIONS__NOTIFY", "mailto:ops@example.com");
        let err = load_in(jail, None).unwrap_err().to_string();
        assert!(
            err.contains("must be an `http://` or `https://` URL"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn shadow_candidates_are_read_and_bad_ones_name_their_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "gate.toml",
            "[shadow]\n\"example@1.0.0\" = \"1.1.0\"\n\"ops@2\" = \"3\"\n",
        )?;
        let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            config.shadow,
            [
                ShadowCandidate {
                    profile_id: "example".into(),
                    profile_version: "1.0.0".into(),
                    candidate_version: "1.1.0".into(),
                },
                ShadowCandidate {
                    profile_id: "ops".into(),
                    profile_version: "2".into(),
                    candidate_version: "3".into(),
                },
            ]
        );
        Ok(())
    });
    for (line, expected) in [
        (
            "\"example\" = \"1.1.0\"",
            "is not a profile like `example@1.0.0`",
        ),
        ("\"../x@1\" = \"2\"", "is not a profile like"),
        (
            "\"example@1.0.0\" = \"../2\"",
            "`../2` is not a profile version",
        ),
        (
            "\"example@1.0.0\" = \"1.0.0\"",
            "is the enforced version itself",
        ),
    ] {
        Jail::expect_with(|jail| {
            jail.create_file("gate.toml", &format!("[shadow]\n{line}\n"))?;
            let err = load_in(jail, Some("gate.toml"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("invalid value for `shadow.") && err.contains(expected),
                "{line}: {err}"
            );
            Ok(())
        });
    }
}

/// The file ledger's path template, when the ledger is the file.
fn file_ledger(config: &Config) -> Option<PathBuf> {
    match &config.single_use_ledger {
        Some(LedgerConfig::File(path)) => Some(path.clone()),
        _ => None,
    }
}

/// A proxy configuration around one `https://` upstream, its grant key written into the jail.
fn proxy_with(jail: &Jail, url: &str, upstream_keys: &str) -> Result<(), figment::Error> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(Default::default())
        .map_err(|err| err.to_string())?;
    jail.create_file("grant.key", &key)?;
    jail.create_file(
        "gate.toml",
        &format!(
            "mode = \"proxy\"\n[grants]\nsigning_key = \"grant.key\"\n\
             [upstreams.\"email.send\"]\nurl = \"{url}\"\n{upstream_keys}"
        ),
    )?;
    Ok(())
}

/// A certificate and its key (PEM), made here.
fn client_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

// Item 5 of issue 14: a client certificate towards an upstream is both files or neither, over
// https only, and files that are missing or do not belong together stop the start, naming the
// key.
#[test]
fn upstream_client_certificates_are_checked_at_start() {
    Jail::expect_with(|jail| {
        let (cert, key) = client_pair("gate.internal");
        let (_, other_key) = client_pair("someone.else");
        jail.create_file("gate.crt", &cert)?;
        jail.create_file("gate.key", &key)?;
        jail.create_file("other.key", &other_key)?;
        let https = "https://tool.internal/send";
        let both = "client_cert = \"gate.crt\"\nclient_key = \"gate.key\"\n";

        proxy_with(jail, https, both)?;
        let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
        let proxy = config.proxy.unwrap();
        let files = proxy.upstreams["email.send"].client_cert.clone().unwrap();
        assert_eq!(files.cert_file, Path::new("gate.crt"));
        assert_eq!(files.key_file, Path::new("gate.key"));
        assert_eq!(proxy.reload_interval, Duration::from_secs(1));

        let cases: &[(&str, &str, &str, &str)] = &[
            (
                https,
                "client_cert = \"gate.crt\"\n",
                "`upstreams.\"email.send\".client_key`",
                "set both or neither",
            ),
            (
                https,
                "client_key = \"gate.key\"\n",
                "`upstreams.\"email.send\".client_cert`",
                "set both or neither",
            ),
            (
                "http://tool.internal/send",
                both,
                "`upstreams.\"email.send\".client_cert`",
                "the `url` must be `https://`",
            ),
            (
                https,
                "client_cert = \"gate.crt\"\nclient_key = \"missing.key\"\n",
                "`upstreams.\"email.send\".client_key`",
                "cannot read `missing.key`",
            ),
            (
                https,
                "client_cert = \"missing.crt\"\nclient_key = \"gate.key\"\n",
                "`upstreams.\"email.send\".client_cert`",
                "cannot read `missing.crt`",
            ),
            (
                https,
                "client_cert = \"gate.key\"\nclient_key = \"gate.key\"\n",
                "`upstreams.\"email.send\".client_cert`",
                "holds no PEM certificate",
            ),
            (
                https,
                "client_cert = \"gate.crt\"\nclient_key = \"other.key\"\n",
                "`upstreams.\"email.send\".client_cert`",
                "do not make a certificate and its key",
            ),
        ];
        for (url, keys, named, says) in cases {
            proxy_with(jail, url, keys)?;
            let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
            assert!(err.contains(named) && err.contains(says), "{keys}: {err}");
            assert!(!err.contains("PRIVATE KEY"), "no key material: {err}");
        }

        proxy_with(jail, https, both)?;
        jail.set_env("ECL_TLS__RELOAD_INTERVAL_MS", "50");
        let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
        assert!(err.contains("`tls.reload_interval_ms`"), "{err}");
        Ok(())
    });
}

// Item 2 of issue 14: `mtls` and `jwt` combine; `none` never does, and a method is named once.
#[test]
fn auth_methods_combine_except_none() {
    Jail::expect_with(|jail| {
        let tls = "[listen_tls]\ncert_file = \"g.pem\"\nkey_file = \"g.key\"\nclient_ca_file = \"ca.pem\"\n";
        let jwt = "[auth.jwt]\nissuer = \"https://issuer\"\naudience = \"ecl-gate\"\njwks_file = \"jwks.json\"\n";
        for methods in ["[\"mtls\", \"jwt\"]", "[\"jwt\", \"mtls\"]"] {
            jail.create_file(
                "gate.toml",
                &format!("{tls}[auth]\nmethods = {methods}\n{jwt}"),
            )?;
            let config = load_in(jail, Some("gate.toml")).map_err(|e| e.to_string())?;
            assert!(config.auth.mtls && config.auth.jwt.is_some(), "{methods}");
        }
        let refused: &[(&str, &str, &str)] = &[
            (tls, "[\"mtls\", \"none\"]", "`none` cannot be combined"),
            (tls, "[\"jwt\", \"jwt\"]", "`jwt` is listed twice"),
            (
                tls,
                "[\"mtls\", \"saml\"]",
                "`saml`: expected `none`, `jwt` or `mtls`",
            ),
            (
                "",
                "[\"mtls\", \"jwt\"]",
                "`mtls` needs `listen_tls.cert_file`",
            ),
        ];
        for (tls, methods, says) in refused {
            jail.create_file(
                "gate.toml",
                &format!("{tls}[auth]\nmethods = {methods}\n{jwt}"),
            )?;
            let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
            assert!(
                err.contains("`auth.methods`") && err.contains(says),
                "{methods}: {err}"
            );
        }
        jail.create_file(
            "gate.toml",
            &format!("{tls}[auth]\nmethods = [\"jwt\"]\n{jwt}"),
        )?;
        let err = load_in(jail, Some("gate.toml")).unwrap_err().to_string();
        assert!(
            err.contains("`listen_tls.client_ca_file`") && err.contains("has `mtls`"),
            "{err}"
        );
        Ok(())
    });
}
