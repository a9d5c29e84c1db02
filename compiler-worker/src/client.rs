//! The worker's connection to the leader: one lazily connected gRPC channel that
//! reconnects by itself (so a worker rides out a leader restart), with the cluster
//! token on every call.

use std::time::Duration;

use std::path::Path;

use anyhow::{Context, bail};
use kiln_proto::cluster_client::ClusterClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

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

/// A client for the leader at `url`. Does not connect until the first call. An
/// `https://` URL needs `tls_ca`, the PEM of the CA that signed the leader's
/// certificate (only that CA is trusted).
pub fn connect(url: &str, token: &str, tls_ca: Option<&Path>) -> anyhow::Result<LeaderClient> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("the leader URL {url:?} is not a valid URL (example: http://127.0.0.1:8470)"))?;
    match (url.starts_with("https://"), tls_ca) {
        (true, Some(ca)) => {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading the CA certificate {} (--tls-ca)", ca.display()))?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls).context("setting up TLS to the leader")?;
        }
        (true, None) => bail!(
            "the leader URL {url} is https://, but no CA is given: pass --tls-ca (KILN_TLS_CA) with the CA that signed the leader's certificate (for a public CA, the system's bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
        ),
        (false, Some(ca)) => bail!(
            "--tls-ca {} is given, but the leader URL {url} is not https://: use https:// (the leader serves TLS with --tls-cert and --tls-key)",
            ca.display()
        ),
        (false, None) => {}
    }
    let endpoint = endpoint
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
