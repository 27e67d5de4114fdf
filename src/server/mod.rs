//! The execution listener: hyper 1.x serving one route, `POST /v1/execute`.
//!
//! Owns sockets and connections. Every accepted request goes through the tower stack built in
//! [`execute_stack`] and always gets an answer; nothing here decides anything.

mod body;
mod execute;
mod gate;
mod shadow;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder};
use tower_http::trace::TraceLayer;

pub use execute::ExecuteService;
pub use gate::{DecideFn, Gate};
pub use shadow::{CandidateStatus, Shadows};

/// The service stack, outermost first.
pub fn execute_stack(
    gate: Arc<Gate>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<impl hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        // Spans for every request, so a decision's log lines can be tied to its connection.
        .layer(TraceLayer::new_for_http())
        // ExecuteService reads the body under its own limits and catches panics itself,
        // because both must still end in an audited DENY, which only it can write.
        .service(ExecuteService::new(gate))
}

/// A bound, not yet serving, execution listener.
pub struct Server {
    listener: TcpListener,
    gate: Arc<Gate>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; read it back with [`Server::local_addr`]).
    pub async fn bind(addr: SocketAddr, gate: Arc<Gate>) -> std::io::Result<Server> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A backlog as deep as the connection limit: a burst of clients waits for a slot
        // instead of overflowing the accept queue (the kernel caps it at somaxconn).
        let backlog = u32::try_from(gate.limits.max_connections).unwrap_or(u32::MAX);
        let listener = socket.listen(backlog)?;
        Ok(Server { listener, gate })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = self.gate.limits;
        let service = execute_stack(self.gate);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes);
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            // Waiting for a connection slot before accepting leaves extra clients in the
            // kernel's backlog instead of holding sockets the gate cannot serve.
            let slot = tokio::select! {
                slot = Arc::clone(&connections).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            );
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(self.listener);
        graceful.shutdown().await;
    }
}

/// A short JSON error for requests that are not execution attempts (wrong path or method).
fn not_an_attempt(status: http::StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = crate::canonical::to_canonical(&crate::canonical::Value::object([(
        "error",
        message.into(),
    )]));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
