//! Running the load: `threads` OS threads, each with a single-threaded tokio runtime driving
//! its share of the connections; per-thread statistics, merged once at the end.
//!
//! One runtime per thread keeps the generator cheap: no work stealing, no locks, no atomics
//! but a few relaxed counters the progress line reads.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::body::Workload;
use super::check::{check_full, Checker};
use crate::decision::DecisionType;

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// This many measured requests, in all.
    Requests(u64),
    /// Measured for this long, after the warm-up.
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub limit: Limit,
    /// Connections, each with one request in flight.
    pub concurrency: usize,
    /// OS threads the connections are spread over.
    pub threads: usize,
    /// Requests sent before measuring starts are not counted.
    pub warmup: Duration,
    /// Per request, connection set-up included.
    pub timeout: Duration,
    pub workload: Workload,
    /// Targets outside 127.0.0.0/8 and ::1 are refused unless this is set.
    pub allow_remote: bool,
    /// For `https://` URLs.
    pub tls: super::TlsFiles,
    /// A file holding a bearer token sent with every request.
    pub bearer_file: Option<std::path::PathBuf>,
    /// A new connection (and TLS handshake) for every request instead of keep-alive.
    pub new_connections: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to `{addr}`: {source}{hint}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot run the load: {0}")]
    Io(#[from] std::io::Error),
}

/// What the progress line shows, about once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub warming_up: bool,
    /// Answers (OK or not) since the start, warm-up included.
    pub done: u64,
    pub failed: u64,
    /// Answers per second since the previous progress report.
    pub rate: f64,
}

/// The final report; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub workload: String,
    pub concurrency: usize,
    pub threads: usize,
    pub warmup_s: f64,
    /// The measured window: from the end of the warm-up to the last answer.
    pub elapsed_s: f64,
    /// Measured requests: `ok + fail`.
    pub requests: u64,
    pub ok: u64,
    pub fail: u64,
    /// Failures by kind, with one example each.
    pub failures: BTreeMap<String, FailureCount>,
    pub decisions: BTreeMap<String, u64>,
    /// `"DECISION REASON"` → count.
    pub reasons: BTreeMap<String, u64>,
    /// OK answers whose decision type is not the one the scenario expects.
    pub unexpected: u64,
    /// OK answers per second over the measured window.
    pub throughput_rps: f64,
    /// Of OK answers, from sending the request to the last byte of the answer.
    pub latency_ms: Latency,
    /// CPU time of this load generator over the whole run (user + system), when known.
    pub load_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureCount {
    pub count: u64,
    pub example: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// Where requests go.
struct Target {
    addr: SocketAddr,
    uri: Uri,
    host: HeaderValue,
    /// `https://` targets.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    authorization: Option<HeaderValue>,
}

fn target(url: &str, allow_remote: bool) -> Result<Target, LoadError> {
    target_with(url, allow_remote, &super::TlsFiles::default(), None)
}

fn target_with(
    url: &str,
    allow_remote: bool,
    tls: &super::TlsFiles,
    bearer_file: Option<&std::path::Path>,
) -> Result<Target, LoadError> {
    let usage = |m: String| LoadError::Usage(m);
    let uri: Uri = url
        .parse()
        .map_err(|_| usage(format!("`{url}` is not a URL")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(usage(format!(
                "`{other}` URLs are not supported; use http:// or https://"
            )))
        }
        None => {
            return Err(usage(format!(
                "`{url}` has no scheme; use http://HOST:PORT/…"
            )))
        }
    };
    if !https && (tls.ca_file.is_some() || tls.client_cert.is_some()) {
        return Err(usage(format!(
            "--cacert and --cert need an https:// URL, not `{url}`"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| usage(format!("`{url}` has no host")))?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| usage(format!("cannot resolve `{host}`: {err}")))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let addr = *addrs
        .first()
        .ok_or_else(|| usage(format!("`{host}` resolves to no address")))?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(usage(format!(
            "`{host}` ({}) is not a loopback address; pass --allow-remote to load another machine",
            addr.ip()
        )));
    }
    let tls = if https {
        Some(super::secure::connector(tls, host)?)
    } else {
        None
    };
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/v1/execute",
        Some(path) => path,
    };
    let request_uri: Uri = path
        .parse()
        .map_err(|_| usage(format!("`{url}` has an invalid path")))?;
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| usage(format!("`{url}` has an invalid host")))?;
    let authorization = bearer_file.map(super::secure::bearer).transpose()?;
    Ok(Target {
        addr,
        uri: request_uri,
        host,
        tls,
        authorization,
    })
}

/// Checks that `url` (and its TLS files and token) is one [`run`] accepts, without connecting.
pub fn check_url(url: &str, allow_remote: bool) -> Result<(), LoadError> {
    target(url, allow_remote).map(|_| ())
}

/// [`check_url`] with everything in `options`.
pub fn check_options(options: &Options) -> Result<(), LoadError> {
    target_with(
        &options.url,
        options.allow_remote,
        &options.tls,
        options.bearer_file.as_deref(),
    )
    .map(|_| ())
}

/// Shared by every thread; written only through relaxed counters.
struct Shared {
    target: Target,
    workload: Workload,
    checker: Checker,
    timeout: Duration,
    /// Measuring starts here (the end of the warm-up).
    measure_from: Instant,
    deadline: Option<Instant>,
    max_requests: Option<u64>,
    /// Unique per run, so two runs against one gate never repeat a `request_id`.
    run_id: String,
    new_connections: bool,
    /// Measured requests handed out (request-count mode).
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// Every this many answers per connection, one is parsed and checked in full.
const FULL_CHECK_EVERY: u64 = 256;
/// A connection that cannot be (re)established this many times in a row gives up.
const MAX_CONNECT_ATTEMPTS: u32 = 3;
/// Latencies are recorded in nanoseconds, up to a minute, to 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// Runs the load; calls `progress` about once a second from the calling thread.
pub fn run(options: &Options, mut progress: impl FnMut(&Progress)) -> Result<Report, LoadError> {
    if options.concurrency == 0 || options.threads == 0 {
        return Err(LoadError::Usage(
            "--concurrency and --threads must be at least 1".to_owned(),
        ));
    }
    if options.workload.templates.is_empty() {
        return Err(LoadError::Usage("no request body to send".to_owned()));
    }
    let target = target_with(
        &options.url,
        options.allow_remote,
        &options.tls,
        options.bearer_file.as_deref(),
    )?;
    // Fail fast, with a clear message, when nothing listens.
    std::net::TcpStream::connect_timeout(&target.addr, options.timeout.min(Duration::from_secs(5)))
        .map_err(|source| LoadError::Connect {
            addr: target.addr,
            hint: if source.kind() == std::io::ErrorKind::ConnectionRefused {
                " (is the gate running and listening there?)"
            } else {
                ""
            },
            source,
        })?;

    let threads = options.threads.min(options.concurrency);
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let (deadline, max_requests) = match options.limit {
        Limit::Duration(d) => (Some(measure_from + d), None),
        Limit::Requests(n) => (None, Some(n)),
    };
    let run_id = format!(
        "load-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let shared = Arc::new(Shared {
        target,
        workload: options.workload.clone(),
        checker: Checker::default(),
        timeout: options.timeout,
        measure_from,
        deadline,
        max_requests,
        run_id,
        new_connections: options.new_connections,
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let cpu_before = process_cpu_seconds();

    let results: Vec<std::io::Result<Stats>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // Connections t, t + threads, t + 2·threads, …
                let workers: Vec<usize> = (t..options.concurrency).step_by(threads).collect();
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("ecl-load-{t}"))
                    .spawn_scoped(scope, move || run_thread(&shared, &workers))
            })
            .collect();
        let mut last = (start, 0u64);
        // Bounded: every worker stops at the deadline or request count, each request within
        // its timeout, so the threads end and so does this loop.
        while handles
            .iter()
            .any(|h| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = Instant::now();
            if now.duration_since(last.0) >= Duration::from_secs(1) {
                let done = shared.done.load(Ordering::Relaxed);
                progress(&Progress {
                    elapsed: now.duration_since(start),
                    warming_up: now < measure_from,
                    done,
                    failed: shared.failed.load(Ordering::Relaxed),
                    rate: (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64(),
                });
                last = (now, done);
            }
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a load thread panicked"))),
                Err(err) => Err(err),
            })
            .collect()
    });

    let mut total = Stats::new()?;
    for stats in results {
        total.merge(stats?);
    }
    let load_cpu_s = match (cpu_before, process_cpu_seconds()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    Ok(total.report(options, measure_from, load_cpu_s))
}

fn run_thread(shared: &Arc<Shared>, workers: &[usize]) -> std::io::Result<Stats> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stats = Rc::new(RefCell::new(Stats::new()?));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let tasks: Vec<_> = workers
            .iter()
            .map(|&w| tokio::task::spawn_local(worker(Arc::clone(shared), Rc::clone(&stats), w)))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    drop(local);
    let stats = stats.replace(Stats::new()?);
    Ok(stats)
}

/// What one exchange ended in.
enum Outcome {
    Answer(http::StatusCode, Bytes),
    Failed(&'static str, String),
}

async fn worker(shared: Arc<Shared>, stats: Rc<RefCell<Stats>>, index: usize) {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut connect_failures = 0u32;
    let mut id_prefix = format!("{}-{index}-", shared.run_id).into_bytes();
    let id_len = id_prefix.len();
    let mut itoa = itoa_buffer::Buffer::default();
    for n in 0u64.. {
        let now = Instant::now();
        if shared.deadline.is_some_and(|d| now >= d) {
            break;
        }
        let measured = now >= shared.measure_from;
        if measured {
            if let Some(max) = shared.max_requests {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= max {
                    break;
                }
            }
        }
        let Some(template) = shared.workload.template(n + index as u64) else {
            break;
        };
        id_prefix.truncate(id_len);
        id_prefix.extend_from_slice(itoa.format(n));
        let body = template.body(&id_prefix);

        let started = Instant::now();
        let outcome = match tokio::time::timeout(shared.timeout, async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = Some(connect(&shared.target).await?);
            }
            match sender.as_mut() {
                Some(s) => exchange(s, &shared.target, body).await,
                None => Err(("connection error", "no connection".to_owned())),
            }
        })
        .await
        {
            Ok(Ok((status, bytes))) => {
                connect_failures = 0;
                if shared.new_connections {
                    sender = None;
                }
                Outcome::Answer(status, bytes)
            }
            Ok(Err((kind, detail))) => Outcome::Failed(kind, detail),
            Err(_) => Outcome::Failed(
                "timeout",
                format!("no answer within {} ms", shared.timeout.as_millis()),
            ),
        };
        let latency = started.elapsed();
        shared.done.fetch_add(1, Ordering::Relaxed);

        let verdict = match outcome {
            Outcome::Answer(status, bytes) if status == http::StatusCode::OK => {
                // The fast check fits the gate's canonical answers; anything it cannot read
                // (another layout, say) and a regular sample get the full parse.
                match shared.checker.check(&bytes) {
                    Ok(checked) if n % FULL_CHECK_EVERY != 0 => {
                        Ok((checked.decision_type, checked.reason.to_owned()))
                    }
                    _ => check_full(&bytes).map_err(|why| ("not a decision", why)),
                }
            }
            Outcome::Answer(status, bytes) => Err((
                status_kind(status),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            )),
            Outcome::Failed(kind, detail) => {
                // The connection may hold a half-read answer: never reuse it.
                sender = None;
                if kind == "connect failed" {
                    connect_failures += 1;
                }
                Err((kind, detail))
            }
        };
        if verdict.is_err() {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        if measured {
            stats
                .borrow_mut()
                .record(verdict, latency, template.expect, Instant::now());
        }
        if connect_failures >= MAX_CONNECT_ATTEMPTS {
            break;
        }
        if connect_failures > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn status_kind(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        503 => "status 503",
        500..=599 => "status 5xx",
        400..=499 => "status 4xx",
        _ => "status other than 200",
    }
}

async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, (&'static str, String)> {
    let failed = |err: &dyn std::fmt::Display| ("connect failed", err.to_string());
    let stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| failed(&e))?;
    let _ = stream.set_nodelay(true);
    let Some((connector, name)) = &target.tls else {
        return handshake(stream).await;
    };
    let stream = connector
        .connect(name.clone(), stream)
        .await
        .map_err(|e| ("TLS handshake failed", e.to_string()))?;
    handshake(stream).await
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, (&'static str, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ("connect failed", e.to_string()))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), (&'static str, String)> {
    let failed = |e: hyper::Error| ("connection error", e.to_string());
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.uri.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, target.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(authorization) = &target.authorization {
        headers.insert(http::header::AUTHORIZATION, authorization.clone());
    }
    sender.ready().await.map_err(failed)?;
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(failed)?
        .to_bytes();
    Ok((status, bytes))
}

/// One thread's tallies, merged at the end.
struct Stats {
    /// Latency of OK answers, in nanoseconds.
    latency: Histogram<u64>,
    ok: u64,
    fail: u64,
    failures: BTreeMap<&'static str, FailureCount>,
    decisions: [u64; 3],
    /// `(decision, reason)` → count; a handful of entries, searched linearly.
    reasons: Vec<((DecisionType, String), u64)>,
    unexpected: u64,
    last_answer: Option<Instant>,
}

impl Stats {
    fn new() -> std::io::Result<Stats> {
        Ok(Stats {
            latency: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)
                .map_err(|e| std::io::Error::other(format!("histogram: {e:?}")))?,
            ok: 0,
            fail: 0,
            failures: BTreeMap::new(),
            decisions: [0; 3],
            reasons: Vec::new(),
            unexpected: 0,
            last_answer: None,
        })
    }

    fn record(
        &mut self,
        verdict: Result<(DecisionType, String), (&'static str, String)>,
        latency: Duration,
        expect: Option<DecisionType>,
        at: Instant,
    ) {
        self.last_answer = Some(at);
        match verdict {
            Ok((decision, reason)) => {
                self.ok += 1;
                self.latency
                    .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
                self.decisions[decision_index(decision)] += 1;
                if expect.is_some_and(|e| e != decision) {
                    self.unexpected += 1;
                }
                match self
                    .reasons
                    .iter_mut()
                    .find(|((d, r), _)| *d == decision && *r == reason)
                {
                    Some((_, count)) => *count += 1,
                    None => self.reasons.push(((decision, reason), 1)),
                }
            }
            Err((kind, example)) => {
                self.fail += 1;
                self.failures
                    .entry(kind)
                    .or_insert(FailureCount { count: 0, example })
                    .count += 1;
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.fail += other.fail;
        for (kind, f) in other.failures {
            self.failures
                .entry(kind)
                .or_insert(FailureCount {
                    count: 0,
                    example: f.example,
                })
                .count += f.count;
        }
        for (total, n) in self.decisions.iter_mut().zip(other.decisions) {
            *total += n;
        }
        for (key, n) in other.reasons {
            match self.reasons.iter_mut().find(|(k, _)| *k == key) {
                Some((_, count)) => *count += n,
                None => self.reasons.push((key, n)),
            }
        }
        self.unexpected += other.unexpected;
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    fn report(self, options: &Options, measure_from: Instant, load_cpu_s: Option<f64>) -> Report {
        let elapsed = self.last_answer.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(measure_from)
        });
        let ms = |ns: u64| ns as f64 / 1e6;
        let q = |quantile| ms(self.latency.value_at_quantile(quantile));
        let types = [
            DecisionType::Allow,
            DecisionType::Deny,
            DecisionType::Escalate,
        ];
        Report {
            url: options.url.clone(),
            workload: options.workload.name.clone(),
            concurrency: options.concurrency,
            threads: options.threads.min(options.concurrency),
            warmup_s: options.warmup.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            requests: self.ok + self.fail,
            ok: self.ok,
            fail: self.fail,
            failures: self
                .failures
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            decisions: types
                .iter()
                .map(|t| (t.as_str().to_owned(), self.decisions[decision_index(*t)]))
                .collect(),
            reasons: self
                .reasons
                .into_iter()
                .map(|((d, r), n)| (format!("{d} {r}"), n))
                .collect(),
            unexpected: self.unexpected,
            throughput_rps: if elapsed.is_zero() {
                0.0
            } else {
                self.ok as f64 / elapsed.as_secs_f64()
            },
            latency_ms: Latency {
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                p99_9: q(0.999),
                max: ms(self.latency.max()),
                mean: self.latency.mean() / 1e6,
            },
            load_cpu_s,
        }
    }
}

fn decision_index(decision: DecisionType) -> usize {
    match decision {
        DecisionType::Allow => 0,
        DecisionType::Deny => 1,
        DecisionType::Escalate => 2,
    }
}

/// User + system CPU seconds of this process so far (Linux; `None` elsewhere). Assumes the
/// usual 100 clock ticks per second.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Decimal formatting of a `u64` without allocating.
mod itoa_buffer {
    #[derive(Default)]
    pub struct Buffer {
        digits: [u8; 20],
    }

    impl Buffer {
        pub fn format(&mut self, mut n: u64) -> &[u8] {
            let mut at = self.digits.len();
            loop {
                at -= 1;
                self.digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            &self.digits[at..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal() {
        let mut b = itoa_buffer::Buffer::default();
        assert_eq!(b.format(0), b"0");
        assert_eq!(b.format(1234567890), b"1234567890");
        assert_eq!(b.format(u64::MAX), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn targets_default_to_the_execute_path_and_stay_on_loopback() {
        let t = target("http://127.0.0.1:8000", false).unwrap();
        assert_eq!(t.uri, "/v1/execute");
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        let t = target("http://localhost:9/x/y?z=1", false).unwrap();
        assert_eq!(t.uri, "/x/y?z=1");
        assert!(t.addr.ip().is_loopback());
        assert!(matches!(
            target("ftp://127.0.0.1:1/", false),
            Err(LoadError::Usage(_))
        ));
        let with_ca = super::super::TlsFiles {
            ca_file: Some("ca.pem".into()),
            client_cert: None,
        };
        match target_with("http://127.0.0.1:1/", false, &with_ca, None) {
            Err(LoadError::Usage(message)) => assert!(message.contains("https://"), "{message}"),
            _ => panic!("--cacert with an http:// URL must be refused"),
        }
        assert!(matches!(
            target("http://192.0.2.1:80/", false),
            Err(LoadError::Usage(_))
        ));
        assert!(matches!(
            target("nonsense", false),
            Err(LoadError::Usage(_))
        ));
    }

    /// The real gate on 127.0.0.1:0 with the shipped profiles, in a runtime of its own.
    fn start_gate(
        dir: &std::path::Path,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        use crate::audit::{AuditLog, AuditSettings, SyncMode};
        use crate::config::RawConfig;
        use crate::profile::ProfileStore;
        use crate::server::{Gate, Server};

        let config = RawConfig {
            listen: "127.0.0.1:0".into(),
            ..RawConfig::default()
        }
        .validate()
        .unwrap();
        let audit = AuditLog::open(AuditSettings {
            path: dir.join("audit.log"),
            sync: SyncMode::Never,
            sync_interval: Duration::from_millis(100),
            queue_capacity: 1024,
            observer: None,
            checkpoints: None,
        })
        .unwrap();
        let profiles = ProfileStore::new(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let gate = Gate::new(&config, profiles, audit);
                let server = Server::bind(config.listen, std::sync::Arc::new(gate))
                    .await
                    .unwrap();
                bound.send(server.local_addr().unwrap()).unwrap();
                server
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        (addr.recv().unwrap(), stop, thread)
    }

    #[test]
    // End to end against the real gate: every request a distinct, audited, expected decision.
    fn a_mixed_run_against_the_gate_is_all_ok_with_distinct_request_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, stop, thread) = start_gate(dir.path());
        let options = Options {
            url: format!("http://{addr}"),
            limit: Limit::Requests(300),
            concurrency: 6,
            threads: 2,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(10),
            workload: Workload {
                name: "mixed".into(),
                templates: super::super::Scenario::Mixed.templates().unwrap(),
            },
            allow_remote: false,
            tls: Default::default(),
            bearer_file: None,
            new_connections: false,
        };
        let mut progress_calls = 0;
        let report = run(&options, |_| progress_calls += 1).unwrap();
        stop.send(()).unwrap();
        thread.join().unwrap();

        assert_eq!((report.ok, report.fail, report.requests), (300, 0, 300));
        // Each connection alternates allow and deny; the split over connections is near even.
        let (allow, deny) = (report.decisions["ALLOW"], report.decisions["DENY"]);
        assert_eq!(allow + deny, 300);
        assert!(allow >= 140 && deny >= 140, "{allow} ALLOW, {deny} DENY");
        assert_eq!(report.reasons["ALLOW OK"], allow);
        assert_eq!(report.reasons["DENY CONSTRAINT_VIOLATION"], deny);
        assert_eq!(report.unexpected, 0);
        assert!(report.throughput_rps > 0.0);
        assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);

        let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let ids: std::collections::HashSet<String> = log
            .lines()
            .map(|line| {
                let record = crate::canonical::parse(line.as_bytes()).unwrap();
                record["request_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 300, "every request has its own request_id");
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        // Bind and drop a listener to find a port that refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = Options {
            url: format!("http://127.0.0.1:{port}/v1/execute"),
            limit: Limit::Requests(1),
            concurrency: 1,
            threads: 1,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(2),
            workload: Workload {
                name: "allow".into(),
                templates: super::super::Scenario::Allow.templates().unwrap(),
            },
            allow_remote: false,
            tls: Default::default(),
            bearer_file: None,
            new_connections: false,
        };
        match run(&options, |_| {}) {
            Err(LoadError::Connect { hint, .. }) => assert!(hint.contains("running")),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn proc_stat_is_readable() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_seconds().is_some());
        }
    }
}
