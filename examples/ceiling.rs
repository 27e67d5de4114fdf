//! The speed-of-light reference for `bench/run.sh`: the gate's hyper/tokio set-up doing only the
//! work no gate can avoid, so a benchmark can state gate/ceiling as a ratio measured in the
//! same run on the same machine.
//!
//! Per request: read the body, SHA-256 it, hand one audit-record-sized line to a single writer
//! thread that chains it (SHA-256 over the line and the previous hash) and appends each batch
//! with one write(2) — plus one fdatasync per batch with `--sync always` — then answer a
//! decision-sized JSON that `ecl-gate load` accepts as a well-formed decision. No parsing, no
//! profile, no decision: whatever the gate spends beyond this is its own overhead.
//!
//! ```text
//! cargo run --release --example ceiling -- --listen 127.0.0.1:0 --sync never
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// The gate's allocator, so the comparison is of work done, not of allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The gate's limits, so both sides configure hyper the same way.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The gate's audit queue and batch size.
const QUEUE_CAPACITY: usize = 8192;
const MAX_BATCH: usize = 512;

#[derive(Debug, Parser)]
#[command(about = "Speed-of-light reference server for ecl-gate benchmarks")]
struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed on stderr)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The log file the lines are appended to [default: a new file in the temp directory]
    #[arg(long)]
    path: Option<PathBuf>,
    /// `always`: one fdatasync per batch before its requests are answered
    #[arg(long, value_enum, default_value = "never")]
    sync: Sync,
    /// Bytes per appended line; the gate's decision records are about 850–980 bytes
    #[arg(long, default_value_t = 900)]
    record_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sync {
    Never,
    Always,
}

/// One line waiting for the writer, and where to send its chain position.
struct Pending {
    line: Vec<u8>,
    reply: oneshot::Sender<std::io::Result<Receipt>>,
}

struct Receipt {
    seq: u64,
    prev_hash: String,
    record_hash: String,
}

struct State {
    tx: flume::Sender<Pending>,
    record_bytes: usize,
    stream: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.path.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ecl-ceiling-{}.log", std::process::id()))
    });
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    let (tx, rx) = flume::bounded(QUEUE_CAPACITY);
    let sync = args.sync;
    let writer = std::thread::Builder::new()
        .name("ceiling-writer".into())
        .spawn(move || write_batches(file, sync, rx))
        .context("cannot start the writer thread")?;
    let state = Arc::new(State {
        tx,
        record_bytes: args.record_bytes.max(200),
        stream: path.file_name().map_or_else(
            || "ceiling.log".into(),
            |n| n.to_string_lossy().into_owned(),
        ),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args.listen, state, &path, sync))?;
    // The last sender went with `state`; the writer drains and ends.
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    Ok(())
}

async fn serve(
    listen: SocketAddr,
    state: Arc<State>,
    path: &std::path::Path,
    sync: Sync,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on `{listen}`"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "ceiling (sync {sync:?}, log {}) serving POST http://{addr}/v1/execute",
        path.display()
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
        });
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return respond(StatusCode::BAD_REQUEST, Bytes::from_static(b"{}")),
    };
    let request_hash = hex::encode(Sha256::digest(&body));
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        line: record_line(&request_hash, state.record_bytes),
        reply,
    };
    if state.tx.send_async(pending).await.is_err() {
        return respond(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"{}"));
    }
    match answer.await {
        Ok(Ok(receipt)) => respond(
            StatusCode::OK,
            Bytes::from(decision(&request_hash, &receipt, &state.stream)),
        ),
        _ => respond(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"{}")),
    }
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON line of `size` bytes (without the chain hash the writer appends) that names the
/// request's hash, like a decision record.
fn record_line(request_hash: &str, size: usize) -> Vec<u8> {
    let mut line = Vec::with_capacity(size + 100);
    line.extend_from_slice(b"{\"record_type\":\"decision\",\"request_hash\":\"sha256:");
    line.extend_from_slice(request_hash.as_bytes());
    line.extend_from_slice(b"\",\"pad\":\"");
    // The writer adds `","record_hash":"sha256:<64 hex>"}` (88 bytes) and a newline.
    let target = size.saturating_sub(89);
    line.resize(target.max(line.len()), b'x');
    line
}

/// A decision-sized answer (~770 bytes, like the gate's ALLOW) that passes `ecl-gate load`'s
/// checks.
fn decision(request_hash: &str, receipt: &Receipt, stream: &str) -> String {
    let mut out = String::with_capacity(800);
    out.push_str(concat!(
        r#"{"approved_call":{"tool_args":{"body":"Hi Bob, the Q3 figures are attached. Best, Alice","#,
        r#""subject":"Quarterly figures","to":"bob@example.com"},"tool_name":"email.send"},"#,
        r#""audit":{"prev_hash":""#
    ));
    out.push_str(&receipt.prev_hash);
    out.push_str(r#"","record_hash":""#);
    out.push_str(&receipt.record_hash);
    out.push_str(r#"","seq":"#);
    out.push_str(&receipt.seq.to_string());
    out.push_str(r#","stream":""#);
    out.push_str(stream);
    out.push_str(concat!(
        r#""},"decision_type":"ALLOW","profile":{"id":"example","#,
        r#""profile_ref_hash":"sha256:10fda2ea0204bbec0c398923b6ccf2badd1b0098abc56faa4d132c713b51d69b","#,
        r#""version":"1.0.0"},"provenance_id":"prov_"#
    ));
    out.push_str(&request_hash[..32]);
    out.push_str(r#"","reason_code":"OK","request_hash":"sha256:"#);
    out.push_str(request_hash);
    out.push_str(r#"","runtime":{"build":"local","name":"ecl-gate","version":"0.1.0"}}"#);
    out
}

/// The writer thread: group commit, like the gate's audit writer.
fn write_batches(mut file: File, sync: Sync, rx: flume::Receiver<Pending>) {
    let mut prev_hash = "sha256:GENESIS".to_owned();
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut receipts = Vec::with_capacity(batch.len());
        for pending in batch.drain(..) {
            let mut hasher = Sha256::new();
            hasher.update(prev_hash.as_bytes());
            hasher.update(&pending.line);
            let record_hash = format!("sha256:{}", hex::encode(hasher.finalize()));
            buf.extend_from_slice(&pending.line);
            buf.extend_from_slice(b"\",\"record_hash\":\"");
            buf.extend_from_slice(record_hash.as_bytes());
            buf.extend_from_slice(b"\"}\n");
            let receipt = Receipt {
                seq,
                prev_hash: std::mem::replace(&mut prev_hash, record_hash.clone()),
                record_hash,
            };
            seq += 1;
            receipts.push((pending.reply, receipt));
        }
        let written = file.write_all(&buf).and_then(|()| match sync {
            Sync::Always => file.sync_data(),
            Sync::Never => Ok(()),
        });
        match written {
            Ok(()) => {
                for (reply, receipt) in receipts {
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(err) => {
                eprintln!("ceiling: write failed: {err}");
                for (reply, _) in receipts {
                    let _ = reply.send(Err(std::io::Error::new(err.kind(), err.to_string())));
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
}
