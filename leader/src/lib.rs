//! Kiln's leader (ordinal 0): the catalog of pipelines, the artifact store, the REST
//! API for users, the gRPC service for workers, cluster health and the leader's side
//! of the scaling guard.
//!
//! Layers: [`rules`] (pure), [`records`] (what the catalog stores), [`catalog`], [`artifacts`] and [`health`] (state),
//! [`service`] (the operations), [`http`] and [`grpc`] (transport), [`error`] (the one
//! mapping of errors to HTTP and gRPC codes).

pub mod artifacts;
pub mod auth;
pub mod catalog;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod page;
pub mod records;
pub mod rules;
pub mod service;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

pub use service::{LeaderConfig, LeaderState};

/// Serves the leader's HTTP and gRPC on `listener` (over TLS when `tls` is given)
/// until `shutdown` resolves, then drains the requests in progress.
///
/// What any client of the port can cost it is bounded in [`listener`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<LeaderState>,
    tls: Option<tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Handlers see each connection's peer address, for the log of refused calls.
    let max_connections = state.config.max_connections;
    listener::serve_app(listener, http::router(state), tls, max_connections, shutdown).await
}
