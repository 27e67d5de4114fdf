// figment's own error type is large; these closures only pass it through.
#![allow(clippy::result_large_err)]

use std::path::Path;

use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use figment::Jail;

use super::*;
use crate::config::{figment, Config, ConfigError, Mode};

fn write_key(jail: &Jail) {
    let pem = KeypairBytes {
        secret_key: [5; 32],
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .unwrap();
    jail.create_file("grant.key", &pem).unwrap();
}

fn load(file: &str) -> Result<Config, ConfigError> {
    Config::from_figment(figment(Some(Path::new(file))))
}

const BASE: &str = r#"
mode = "proxy"
[grants]
signing_key = "grant.key"
[upstreams."email.send"]
url = "https://mail.internal:8443/v1/send"
"#;

#[test]
fn a_proxy_config_loads_with_credentials_from_env_and_file() {
    Jail::expect_with(|jail| {
        write_key(jail);
        jail.create_file("api-key", "s3cret-from-file\n")?;
        jail.set_env("EMAIL_API_KEY", "s3cret-from-env");
        jail.create_file(
            "gate.toml",
            &format!(
                "{BASE}timeout_ms = 2500\naudience = \"mail\"\n\
                 headers = {{ Authorization = {{ env = \"EMAIL_API_KEY\", prefix = \"Bearer \" }}, \"X-Api-Key\" = {{ file = \"api-key\" }}, \"X-Team\" = \"ops\" }}\n"
            ),
        )?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        assert_eq!(config.mode, Mode::Proxy);
        let proxy = config.proxy.as_ref().unwrap();
        let upstream = &proxy.upstreams["email.send"];
        assert_eq!(upstream.method, http::Method::POST);
        assert_eq!(upstream.timeout, Duration::from_millis(2500));
        assert_eq!(upstream.audience, "mail");
        let header = |name: &str| {
            upstream
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header("authorization").as_deref(),
            Some("Bearer s3cret-from-env")
        );
        assert_eq!(header("x-api-key").as_deref(), Some("s3cret-from-file"));
        assert_eq!(header("x-team").as_deref(), Some("ops"));
        assert_eq!(proxy.signer.ttl(), Duration::from_secs(30));
        // Secrets never show in Debug output (which is what would end up in a log).
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        Ok(())
    });
}

#[test]
fn the_audience_defaults_to_the_url() {
    Jail::expect_with(|jail| {
        write_key(jail);
        jail.create_file("gate.toml", BASE)?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        let upstream = &config.proxy.unwrap().upstreams["email.send"];
        assert_eq!(upstream.audience, "https://mail.internal:8443/v1/send");
        Ok(())
    });
}

// Issue 16: the default audience was the whole URL, so a token in the query went into every
// grant and outcome record.
#[test]
fn the_default_audience_drops_query_and_fragment() {
    Jail::expect_with(|jail| {
        write_key(jail);
        jail.create_file(
            "gate.toml",
            "mode = \"proxy\"\n[grants]\nsigning_key = \"grant.key\"\n\
             [upstreams.\"a\"]\nurl = \"https://hooks.example:8443/send?token=S3CRET&x=1\"\n\
             [upstreams.\"b\"]\nurl = \"https://hooks.example/v1/b#S3CRET\"\n\
             [upstreams.\"c\"]\nurl = \"http://10.0.0.7?token=S3CRET\"\n",
        )?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        let upstreams = config.proxy.unwrap().upstreams;
        assert_eq!(upstreams["a"].audience, "https://hooks.example:8443/send");
        assert_eq!(upstreams["b"].audience, "https://hooks.example/v1/b");
        assert_eq!(upstreams["c"].audience, "http://10.0.0.7/");
        for upstream in upstreams.values() {
            assert!(!format!("{upstream:?}").contains("S3CRET") || upstream.url.query().is_some());
            assert!(!url_without_query(&upstream.url).contains("S3CRET"));
        }
        Ok(())
    });
}

#[test]
fn max_concurrent_defaults_and_is_bounded() {
    Jail::expect_with(|jail| {
        write_key(jail);
        jail.create_file("gate.toml", BASE)?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        assert_eq!(
            config.proxy.unwrap().upstreams["email.send"].max_concurrent,
            64
        );
        Ok(())
    });
    for bad in ["max_concurrent = 0\n", "max_concurrent = 100001\n"] {
        let message = error_for(bad, |_| {});
        assert!(
            message.starts_with("invalid value for `upstreams.\"email.send\".max_concurrent`: "),
            "{message}"
        );
    }
}

// Issue 16: validation runs before logging, so its warnings travel in the config.
#[test]
fn start_warnings_are_collected_for_the_caller_to_log() {
    Jail::expect_with(|jail| {
        write_key(jail);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                jail.directory().join("grant.key"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        jail.create_file(
            "gate.toml",
            &format!("shutdown_grace_ms = 5000\n{BASE}timeout_ms = 6000\n[approvals]\nsingle_use = false\n"),
        )?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        let warnings = config.warnings.join("\n");
        #[cfg(unix)]
        assert!(
            warnings.contains("grant signing key `grant.key` is readable by other users"),
            "{warnings}"
        );
        assert!(
            warnings.contains(
                "upstream `email.send` has `timeout_ms` 6000 above `shutdown_grace_ms` 5000"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains("`approvals.single_use = false`"),
            "{warnings}"
        );
        Ok(())
    });
}

/// Loads `extra` on top of [`BASE`] and returns the error message.
fn error_for(extra: &str, setup: impl FnOnce(&mut Jail)) -> String {
    let mut message = String::new();
    Jail::expect_with(|jail| {
        write_key(jail);
        setup(jail);
        jail.create_file("gate.toml", &format!("{BASE}{extra}"))?;
        message = load("gate.toml").unwrap_err().to_string();
        Ok(())
    });
    message
}

#[test]
fn a_missing_credential_is_a_config_error_naming_the_key_not_the_value() {
    let message = error_for(
        "headers = { Authorization = { env = \"NOT_SET_ANYWHERE_42\" } }\n",
        |_| {},
    );
    assert_eq!(
        message,
        "invalid value for `upstreams.\"email.send\".headers.Authorization`: environment variable `NOT_SET_ANYWHERE_42` is not set"
    );
    let message = error_for(
        "headers = { Authorization = { file = \"/run/secrets/nope\" } }\n",
        |_| {},
    );
    assert!(
        message.starts_with("invalid value for `upstreams.\"email.send\".headers.Authorization`: cannot read `/run/secrets/nope`"),
        "{message}"
    );
    let message = error_for(
        "headers = { Authorization = { env = \"BAD_HEADER_VALUE\" } }\n",
        |jail| jail.set_env("BAD_HEADER_VALUE", "s3cret\nInjected: yes"),
    );
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn bad_upstream_keys_are_config_errors() {
    let cases = [
        ("method = \"GET\"\n", "upstreams.\"email.send\".method"),
        ("timeout_ms = 0\n", "upstreams.\"email.send\".timeout_ms"),
        (
            "headers = { \"ECL-Grant\" = \"forged\" }\n",
            "upstreams.\"email.send\".headers.ECL-Grant",
        ),
        (
            "headers = { Host = \"x\" }\n",
            "upstreams.\"email.send\".headers.Host",
        ),
        (
            "headers = { \"user-agent\" = \"x\" }\n",
            "upstreams.\"email.send\".headers.user-agent",
        ),
        (
            "[upstreams.\"x\"]\nurl = \"ftp://files/x\"\n",
            "upstreams.\"x\".url",
        ),
        (
            "[upstreams.\"x\"]\nurl = \"https://user:pw@host/x\"\n",
            "upstreams.\"x\".url",
        ),
        ("[grants.x]\n", "grants"),
    ];
    for (extra, key) in cases {
        let message = error_for(extra, |_| {});
        assert!(message.contains(key), "{extra:?}: {message}");
    }
}

#[test]
fn proxy_mode_needs_a_signing_key_and_an_upstream() {
    Jail::expect_with(|jail| {
        jail.create_file("a.toml", "mode = \"proxy\"\n")?;
        let message = load("a.toml").unwrap_err().to_string();
        assert!(message.contains("`upstreams`"), "{message}");
        jail.create_file(
            "b.toml",
            "mode = \"proxy\"\n[upstreams.\"t\"]\nurl = \"http://t/\"\n",
        )?;
        let message = load("b.toml").unwrap_err().to_string();
        assert!(message.contains("`grants.signing_key`"), "{message}");
        jail.create_file("junk.key", "not a key")?;
        jail.create_file(
            "c.toml",
            "mode = \"proxy\"\n[grants]\nsigning_key = \"junk.key\"\n[upstreams.\"t\"]\nurl = \"http://t/\"\n",
        )?;
        let message = load("c.toml").unwrap_err().to_string();
        assert!(message.contains("`grants.signing_key`"), "{message}");
        write_key(jail);
        jail.create_file(
            "d.toml",
            "mode = \"proxy\"\n[grants]\nsigning_key = \"grant.key\"\nttl = \"1h\"\n[upstreams.\"t\"]\nurl = \"http://t/\"\n",
        )?;
        let message = load("d.toml").unwrap_err().to_string();
        assert!(message.contains("`grants.ttl`"), "{message}");
        Ok(())
    });
}

#[test]
fn decide_mode_reads_no_upstream_secret() {
    // A decide-mode gate sharing a config with a proxy does not need the proxy's secrets.
    Jail::expect_with(|jail| {
        jail.create_file(
            "gate.toml",
            "[upstreams.\"t\"]\nurl = \"http://t/\"\nheaders = { A = { env = \"NOT_SET_ANYWHERE_42\" } }\n",
        )?;
        let config = load("gate.toml").map_err(|e| e.to_string())?;
        assert!(config.proxy.is_none());
        Ok(())
    });
}

#[test]
fn an_https_upstream_with_nothing_trusted_is_refused() {
    let message = error_for("[tls]\npublic_roots = false\n", |_| {});
    assert!(message.contains("`tls.ca_file`"), "{message}");
    let message = error_for("[tls]\nca_file = \"none.pem\"\n", |_| {});
    assert!(message.contains("`tls.ca_file`"), "{message}");
    let message = error_for("[tls]\nca_file = \"empty.pem\"\n", |jail| {
        jail.create_file("empty.pem", "").unwrap();
    });
    assert!(message.contains("holds no PEM certificate"), "{message}");
}

#[test]
fn upstream_env_keys_work_for_tools_without_dots() {
    Jail::expect_with(|jail| {
        write_key(jail);
        jail.set_env("ECL_MODE", "proxy");
        jail.set_env("ECL_GRANTS__SIGNING_KEY", "grant.key");
        jail.set_env("ECL_UPSTREAMS__search__URL", "http://search:8080/q");
        let config = Config::from_figment(figment(None)).map_err(|e| e.to_string())?;
        let proxy = config.proxy.unwrap();
        assert!(proxy.upstreams.contains_key("search"));
        Ok(())
    });
}

fn answer(content_type: Option<&str>, body: &'static [u8]) -> Answer {
    Answer {
        status: http::StatusCode::OK,
        content_type: content_type.map(str::to_owned),
        body: Bytes::from_static(body),
    }
}

#[test]
fn answers_render_as_json_text_or_base64() {
    let (value, encoding) = render_body(&answer(Some("application/json"), br#"{"ok":true}"#));
    assert_eq!(encoding, "json");
    assert_eq!(value, Value::object([("ok", true.into())]));
    let (_, encoding) = render_body(&answer(
        Some("application/problem+json; charset=utf-8"),
        br#"{"title":"x"}"#,
    ));
    assert_eq!(encoding, "json");
    // JSON the strict parser refuses (a duplicate key) is passed on as text, not reinterpreted.
    let (value, encoding) = render_body(&answer(Some("application/json"), br#"{"a":1,"a":2}"#));
    assert_eq!((value, encoding), (Value::from(r#"{"a":1,"a":2}"#), "text"));
    // Without a JSON content type, `123` stays the text the tool sent.
    let (value, encoding) = render_body(&answer(Some("text/plain"), b"123"));
    assert_eq!((value, encoding), (Value::from("123"), "text"));
    let (value, encoding) = render_body(&answer(None, &[0xff, 0x00, 0x41]));
    assert_eq!((value, encoding), (Value::from("/wBB"), "base64"));
}
