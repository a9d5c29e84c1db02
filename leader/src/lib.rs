//! Kiln's leader (ordinal 0): the catalog of pipelines, the artifact store, the REST
//! API for users, the gRPC service for workers, cluster health and the leader's side
//! of the scaling guard.
//!
//! Layers: [`rules`] (pure), [`records`] (what the catalog stores), [`catalog`], [`artifacts`] and [`health`] (state),
//! [`service`] (the operations), [`http`] and [`grpc`] (transport), [`error`] (the one
//! mapping of errors to HTTP and gRPC codes).

pub mod artifacts;
pub mod catalog;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod records;
pub mod rules;
pub mod service;

use std::future::Future;
use std::sync::Arc;

pub use service::{LeaderConfig, LeaderState};

/// Serves the leader's HTTP and gRPC on `listener` until `shutdown` resolves, then
/// drains the requests in progress.
///
/// Every connection has TCP_NODELAY: gRPC answers are small writes, and with Nagle's
/// algorithm each one waited for the peer's delayed ACK (about 40 ms per call on
/// Linux), which was most of a delivery's time (benchmark 1 in benches/RESULTS.md).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<LeaderState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
    });
    // With each connection's peer address, for the log of refused calls.
    let app = http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
