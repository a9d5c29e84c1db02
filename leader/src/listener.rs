//! The accept loop of the leader's port (and of a worker's `/healthz`), with or
//! without TLS: what any client that reaches the port can cost it.
//!
//! - **A connection cap** ([`MAX_CONNECTIONS`], and below the process's file
//!   limit, which is raised to its hard limit at startup). At the cap, a new
//!   connection takes the place of the oldest one that has not yet sent a byte,
//!   so a flood of silent connections cannot lock out a probe or a member.
//! - **A first-byte timeout** ([`FIRST_BYTE_TIMEOUT`]): a connection that says
//!   nothing is closed; **a header-read timeout** ([`HEADER_READ_TIMEOUT`]) for
//!   HTTP/1.1 requests whose headers do not arrive in full (slowloris).
//! - TCP_NODELAY on every connection: gRPC answers are small writes, and with
//!   Nagle's algorithm each one waited for the peer's delayed ACK (about 40 ms per
//!   call on Linux; benchmark 1 in benches/RESULTS.md).
//! - Handlers read the peer's address as `ConnectInfo<SocketAddr>`.
//!
//! On shutdown the loop stops accepting and drains the requests in progress.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::{HANDSHAKE_TIMEOUT, ServerTls, TLS_HANDSHAKE_RECORD, refuse_plain};

/// The most connections served at once, by default (`--max-connections`).
pub const MAX_CONNECTIONS: usize = 32_768;
/// File descriptors kept for everything else (the catalog, artifacts, logs).
const SPARE_FILES: u64 = 512;
/// How long a new connection may stay silent.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 request's headers may take to arrive in full.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard one, and returns how many
/// connections fit under it, at most `max`.
fn connection_budget(max: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    (limit.saturating_sub(SPARE_FILES).max(64) as usize).min(max)
}

/// Connections that have not sent a byte yet, oldest first: the ones a new
/// connection may take the place of at the cap.
#[derive(Default)]
struct Silent {
    next: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
}

impl Silent {
    fn enter(&mut self) -> (u64, CancellationToken) {
        self.next += 1;
        let token = CancellationToken::new();
        self.waiting.push_back((self.next, token.clone()));
        (self.next, token)
    }

    fn leave(&mut self, id: u64) {
        if let Some(at) = self.waiting.iter().position(|(i, _)| *i == id) {
            self.waiting.remove(at);
        }
    }

    /// Closes the oldest silent connection; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.waiting.pop_front() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, over TLS when `tls` is
/// given, then drains the requests in progress.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<ServerTls>,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let budget = connection_budget(max_connections.max(1));
    let slots = Arc::new(Semaphore::new(budget));
    let silent = Arc::new(Mutex::new(Silent::default()));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let evicted = silent.lock().unwrap_or_else(|p| p.into_inner()).evict_oldest();
                if !evicted {
                    tracing::warn!(%peer, budget, "connection cap reached and every connection is active: refused");
                    continue;
                }
                // The evicted connection's task ends at once and gives its slot back.
                match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => continue,
                }
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
        let (id, evict) = silent.lock().unwrap_or_else(|p| p.into_inner()).enter();
        let (app, tls, stop, silent) = (app.clone(), tls.clone(), stop.clone(), silent.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut first = [0u8; 1];
            let spoke = tokio::select! {
                peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)) => matches!(peeked, Ok(Ok(1))),
                () = evict.cancelled() => false,
            };
            silent.lock().unwrap_or_else(|p| p.into_inner()).leave(id);
            if spoke {
                connection(stream, peer, first[0], app, tls, stop).await;
            }
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection that has sent its first byte: plain HTTP, TLS, or plain HTTP on
/// the TLS port (answered with the fix).
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    first: u8,
    app: axum::Router,
    tls: Option<ServerTls>,
    stop: CancellationToken,
) {
    let service = move |app: axum::Router| {
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower::Service::call(&mut app, request).await }
        })
    };
    let Some(tls) = tls else {
        serve_connection(TokioIo::new(stream), service(app), stop).await;
        return;
    };
    if first != TLS_HANDSHAKE_RECORD {
        tracing::debug!(%peer, "plain HTTP on the TLS port: answered with the fix");
        let refuse = hyper::service::service_fn(|request| async move { Ok::<_, Infallible>(refuse_plain(&request)) });
        serve_connection(TokioIo::new(stream), refuse, stop).await;
        return;
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    serve_connection(TokioIo::new(stream), service(app), stop).await;
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends, or until `stop`,
/// when it finishes the requests in progress.
async fn serve_connection<I, S, B>(io: I, service: S, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_silent_connection_makes_room_and_one_that_spoke_is_never_evicted() {
        let mut silent = Silent::default();
        let (a, token_a) = silent.enter();
        let (b, token_b) = silent.enter();
        silent.leave(a);
        assert!(silent.evict_oldest());
        assert!(!token_a.is_cancelled(), "a connection that spoke stays");
        assert!(token_b.is_cancelled());
        silent.leave(b);
        assert!(!silent.evict_oldest(), "nothing left to evict");
    }
}
