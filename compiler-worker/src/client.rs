//! The worker's connection to the leader: one lazily connected gRPC channel that
//! reconnects by itself (so a worker rides out a leader restart), with the cluster
//! token on every call.

use std::time::Duration;

use anyhow::Context;
use kiln_proto::cluster_client::ClusterClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <cluster token>` to every call.
#[derive(Clone)]
pub struct TokenInterceptor(MetadataValue<Ascii>);

impl std::fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenInterceptor(<redacted>)")
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(kiln_proto::AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

pub type LeaderClient = ClusterClient<InterceptedService<Channel, TokenInterceptor>>;

/// A client for the leader at `url`. Does not connect until the first call.
pub fn connect(url: &str, token: &str) -> anyhow::Result<LeaderClient> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("the leader URL {url:?} is not a valid URL (example: http://127.0.0.1:8470)"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let token: MetadataValue<Ascii> =
        format!("Bearer {token}").parse().context("the cluster token must be printable ASCII")?;
    Ok(ClusterClient::with_interceptor(endpoint.connect_lazy(), TokenInterceptor(token))
        .max_decoding_message_size(kiln_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(kiln_proto::MAX_MESSAGE_BYTES))
}
