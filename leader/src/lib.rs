//! Kiln's leader (ordinal 0): the catalog of pipelines, the artifact store, the REST
//! API for users, the gRPC service for workers, cluster health and the leader's side
//! of the scaling guard.
//!
//! Layers, each using only those listed before it:
//! - [`rules`]: pure decisions over records (the pipeline's life, what a
//!   submission changes, who holds a claim and what a report or upload changes,
//!   the binary cache's key), tested without storage or network.
//! - [`records`]: how the catalog's records are encoded.
//! - [`catalog`], [`artifacts`] and [`health`]: state. The catalog loads a
//!   record, asks a rule, and stores the answer in one transaction.
//! - [`error`] (the one mapping of errors to HTTP and gRPC codes) and [`metrics`].
//! - [`service`]: the operations, one file per capability (pipelines, members,
//!   claims and leases, retention, binaries) over one shared `LeaderState`.
//! - Transport: [`grpc`] for workers, [`auth`], [`page`] and [`http`] for users,
//!   [`tls`] and [`listener`] under both.

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
