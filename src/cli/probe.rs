//! `ecl-gate probe URL`: a health check for images without curl (the Dockerfile's
//! `HEALTHCHECK`, a Kubernetes `exec` probe). One plain-HTTP GET; exit 0 on a 2xx answer,
//! 1 on anything else, with the reason on stderr.
//!
//! It only ever talks to the address it is given, reads at most one line of the answer and
//! gives up after `--timeout`, so a wedged gate makes the probe fail, never hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The longest status line read; a real one is ~20 bytes.
const MAX_STATUS_LINE: u64 = 1024;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// What to GET, e.g. http://127.0.0.1:9000/readyz (plain http only)
    #[arg(value_name = "URL")]
    pub url: String,
    /// Give up after this long, e.g. 2s
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn run(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    match probe(&args.url, args.timeout) {
        Ok(status) if (200..300).contains(&status.0) => Ok(ExitCode::SUCCESS),
        Ok((_, line)) => {
            eprintln!("probe: `{}` answered `{line}`", args.url);
            Ok(ExitCode::from(super::EXIT_PROBLEM))
        }
        Err(err) => {
            eprintln!("probe: `{}`: {err:#}", args.url);
            Ok(ExitCode::from(super::EXIT_PROBLEM))
        }
    }
}

/// GETs `url`; returns the status code and the status line.
fn probe(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let (authority, path) = split_url(url)?;
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve `{authority}`"))?
        .next()
        .ok_or_else(|| anyhow!("`{authority}` resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left()))?;
    (&stream).write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    stream.set_read_timeout(Some(left()))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_STATUS_LINE))
        .read_line(&mut line)
        .context("no answer")?;
    let line = line.trim_end().to_owned();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: `{line}`"))?;
    Ok((status, line))
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs can be probed");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        bail!("the URL must name a host and a port, e.g. http://127.0.0.1:9000/readyz");
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!("the path must not contain white space");
    }
    Ok((authority, path))
}
