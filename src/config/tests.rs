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
        assert_eq!(
            config.single_use_ledger, None,
            "decide mode executes nothing"
        );
        jail.create_file("a.toml", "[audit]\npath = \"/var/log/ecl/{hostname}/audit.log\"\n[approvals]\nsingle_use = true\n")?;
        let config = load_in(jail, Some("a.toml")).map_err(|e| e.to_string())?;
        assert_eq!(
            config.single_use_ledger,
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
            config.single_use_ledger,
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
