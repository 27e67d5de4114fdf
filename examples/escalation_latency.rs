//! Measures the approval inbox: how long an ESCALATE takes to reach the approver (the gate's
//! answer → the approver knows the intent), and how the inbox pages hold up as pending
//! escalations pile up. Talks plain HTTP/1.1 to a running gate and `approver serve`, loopback
//! only; sequential, so the figures are latencies, not throughput.
//!
//! ```text
//! cargo run --release --example escalation_latency -- --gate 127.0.0.1:8000 \
//!     --approver-agent 127.0.0.1:8301 --approver-inbox 127.0.0.1:8300 \
//!     --user alice --password '…' --escalations 2000 --inbox-at 100,1000,2000
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ecl_gate::canonical::{self, Value};

#[derive(Debug, Parser)]
struct Args {
    /// The gate's execution listener
    #[arg(long)]
    gate: String,
    /// The approver's agent listener (notifications and waits)
    #[arg(long)]
    approver_agent: String,
    /// The approver's inbox listener
    #[arg(long)]
    approver_inbox: String,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// Escalations to send, one after the other
    #[arg(long, default_value_t = 1000)]
    escalations: usize,
    /// Pending counts at which the inbox and a detail page are timed
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    inbox_at: Vec<usize>,
    /// Page loads per measurement
    #[arg(long, default_value_t = 20)]
    page_loads: usize,
}

fn exchange(addr: &str, head: &str, body: &[u8]) -> anyhow::Result<(u16, String, String)> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    let mut buf = [0u8; 65536];
    let (split, length) = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("{addr} closed the connection early");
        }
        response.extend_from_slice(&buf[..n]);
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at, length);
        }
    };
    while response.len() < split + 4 + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = String::from_utf8_lossy(&response[split + 4..]).into_owned();
    Ok((status, head, body))
}

fn get(addr: &str, path: &str, cookie: &str) -> anyhow::Result<(u16, String, String)> {
    exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
        b"",
    )
}

fn post(
    addr: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String, String)> {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
            body.len()
        ),
        body,
    )
}

fn escalate(gate: &str, n: usize) -> anyhow::Result<String> {
    let snapshot = Value::object([("run", "escalation-latency".into())]);
    let request = Value::object([
        ("request_id", format!("lat-{n}").into()),
        (
            "actor",
            Value::object([
                ("principal_id", "agent:bench".into()),
                ("principal_type", "agent".into()),
            ]),
        ),
        (
            "tool",
            Value::object([
                ("name", "deploy.run".into()),
                (
                    "args",
                    Value::object([
                        ("service", format!("svc-{n}").into()),
                        ("version", "1.0.0".into()),
                    ]),
                ),
            ]),
        ),
        (
            "profile",
            Value::object([("id", "ops".into()), ("version", "1.0.0".into())]),
        ),
        (
            "context",
            Value::object([
                ("snapshot_hash", canonical::hash(&snapshot).into()),
                ("snapshot", snapshot),
            ]),
        ),
    ]);
    let (_, _, body) = post(
        gate,
        "/v1/execute",
        "Content-Type: application/json\r\n",
        &canonical::to_canonical(&request),
    )?;
    let answer = canonical::parse(body.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match answer
        .get("escalation")
        .and_then(|e| e.get("intent_hash"))
        .and_then(Value::as_str)
    {
        Some(hash) => Ok(hash.to_owned()),
        None => bail!("not an ESCALATE: {body}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn sign_in(args: &Args) -> anyhow::Result<String> {
    let (_, head, _) = get(&args.approver_inbox, "/login", "")?;
    let nonce = head
        .lines()
        .find_map(|l| l.split("ecl_approver_login=").nth(1))
        .and_then(|v| v.split(';').next())
        .context("no sign-in nonce")?
        .to_owned();
    let form = format!(
        "csrf={nonce}&user={}&password={}",
        args.user,
        args.password.replace(' ', "+")
    );
    let (status, head, _) = post(
        &args.approver_inbox,
        "/login",
        &format!("Content-Type: application/x-www-form-urlencoded\r\nCookie: ecl_approver_login={nonce}\r\n"),
        form.as_bytes(),
    )?;
    if status != 303 {
        bail!("sign-in failed: HTTP {status}");
    }
    head.lines()
        .find_map(|l| {
            l.split("Set-Cookie: ")
                .nth(1)
                .or_else(|| l.split("set-cookie: ").nth(1))
        })
        .filter(|c| c.starts_with("ecl_approver_session="))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .context("no session cookie")
}

fn time_pages(args: &Args, session: &str, intent: &str, pending: usize) -> anyhow::Result<()> {
    let mut inbox = Vec::new();
    let mut detail = Vec::new();
    for _ in 0..args.page_loads {
        let started = Instant::now();
        let (status, _, body) = get(&args.approver_inbox, "/", session)?;
        inbox.push(started.elapsed());
        if status != 200 || !body.contains("Pending escalations") {
            bail!("inbox answered HTTP {status}");
        }
        let started = Instant::now();
        let (status, _, _) = get(
            &args.approver_inbox,
            &format!("/escalations/{intent}"),
            session,
        )?;
        detail.push(started.elapsed());
        if status != 200 {
            bail!("detail answered HTTP {status}");
        }
    }
    inbox.sort();
    detail.sort();
    println!(
        "pending={pending:>6}  inbox p50 {:>8.2?} p99 {:>8.2?}   detail p50 {:>8.2?} p99 {:>8.2?}",
        percentile(&inbox, 0.5),
        percentile(&inbox, 0.99),
        percentile(&detail, 0.5),
        percentile(&detail, 0.99)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let session = sign_in(&args)?;
    let mut latencies = Vec::with_capacity(args.escalations);
    let started = Instant::now();
    for n in 0..args.escalations {
        let intent = escalate(&args.gate, n)?;
        let answered = Instant::now();
        loop {
            let (status, _, _) = get(&args.approver_agent, &format!("/v1/approvals/{intent}"), "")?;
            if status != 404 {
                break;
            }
            if answered.elapsed() > Duration::from_secs(30) {
                bail!("escalation {intent} never reached the approver");
            }
        }
        latencies.push(answered.elapsed());
        if args.inbox_at.contains(&(n + 1)) {
            time_pages(&args, &session, &intent, n + 1)?;
        }
        if (n + 1) % 500 == 0 {
            eprintln!("{} escalations sent ({:.0?})", n + 1, started.elapsed());
        }
    }
    latencies.sort();
    println!(
        "ESCALATE answered -> known to the approver, {} escalations: p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
