//! TLS for the leader's one port (the `/v0` API, the page, the probes and
//! the workers' gRPC) and a worker's `/healthz`, with rustls.
//!
//! - ALPN offers `h2` and `http/1.1`, so gRPC (HTTP/2) and plain HTTP/1.1 clients
//!   share the port as they do without TLS.
//! - The certificate and key are read again when their files change (checked at
//!   most every [`RELOAD_CHECK`] on a handshake), so a certificate renewed in its
//!   mounted Secret (cert-manager) is served without a restart; a pair that does
//!   not load keeps the previous one in service and is logged.
//! - A client that speaks plain HTTP to the TLS port gets a plain answer rather
//!   than a closed connection: HTTP/1.1 clients a 400 with a JSON error, gRPC
//!   clients (h2c) an UNAVAILABLE status; both say to use `https://` and `--tls-ca`.
//! - A handshake that does not finish within [`HANDSHAKE_TIMEOUT`] is dropped, off
//!   the accept loop, so a silent client holds nothing but its own task (the
//!   accept loop itself is [`crate::listener`]'s).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake (or send its first byte).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often, at most, the certificate files are looked at again.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a client speaking plain HTTP to the TLS port is told.
pub const PLAIN_HTTP_REFUSED: &str = "this port serves HTTPS (TLS) only: use an https:// URL for the leader, and give the CA that signed its certificate with --tls-ca (KILN_TLS_CA)";

/// The crypto provider of every TLS endpoint of Kiln's. Named rather than taken
/// from the process default, because the dependency graph enables both of
/// rustls's providers and the default is then ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server's TLS: its certificate (reloaded when its files change) and ALPN.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads a PEM certificate chain and its private key. Errors name the file and
    /// what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<ServerTls> {
        let provider = provider();
        let resolver = ReloadingCertificate::load(cert, key, provider.clone())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing the TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }
}

/// Reads a certificate chain and its key into rustls's form, and checks that they
/// belong together.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("the TLS certificate {} is not PEM", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            cert.display()
        );
    }
    let private = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!("reading the TLS key {}: expected a PEM private key (PKCS#8, PKCS#1 or SEC1)", key.display())
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).with_context(|| {
        format!("the TLS key {} does not go with the certificate {}", key.display(), cert.display())
    })?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A certificate that follows its files.
#[derive(Debug)]
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// [`RELOAD_CHECK`], but for tests.
    check_every: Duration,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCertificate {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> anyhow::Result<ReloadingCertificate> {
        let stamps = (modified(cert), modified(key));
        let loaded = read_pair(cert, key, &provider)?;
        Ok(ReloadingCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            check_every: RELOAD_CHECK,
            current: Mutex::new(Loaded { key: loaded, stamps, checked: Instant::now() }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= self.check_every {
            current.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != current.stamps {
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        tracing::info!(certificate = %self.cert.display(), "TLS certificate reloaded");
                        current.key = key;
                        current.stamps = stamps;
                    }
                    // Perhaps half written: keep serving the previous pair, look again later.
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "TLS certificate not reloaded; the previous one is still served"
                    ),
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The answer to a request that came in plain HTTP on the TLS port.
pub(crate) fn refuse_plain<B>(request: &hyper::Request<B>) -> hyper::Response<axum::body::Body> {
    let grpc = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let response = if grpc {
        // A trailers-only gRPC answer: the client reads the status from the headers.
        hyper::Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", (tonic::Code::Unavailable as i32).to_string())
            .header("grpc-message", PLAIN_HTTP_REFUSED)
            .body(axum::body::Body::empty())
    } else {
        let body = kiln_core::api::ErrorBody { error: PLAIN_HTTP_REFUSED.to_owned(), code: "tls_required".to_owned() };
        hyper::Response::builder()
            .status(hyper::StatusCode::BAD_REQUEST)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "close")
            .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap_or_default()))
    };
    // Built from constant, valid parts.
    response.expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
        made.cert.der().to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let first = write_pair(dir.path(), "first.example");
        let mut reloading = ReloadingCertificate::load(&cert, &key, provider()).unwrap();
        reloading.check_every = Duration::ZERO;
        assert_eq!(reloading.current().cert[0].as_ref(), &first[..]);

        let second = write_pair(dir.path(), "second.example");
        assert_eq!(reloading.current().cert[0].as_ref(), &second[..], "the renewed pair is served");

        std::fs::write(&key, "not a key").unwrap();
        assert_eq!(reloading.current().cert[0].as_ref(), &second[..], "a broken pair keeps the previous one");
    }

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "nothing here").unwrap();
        std::fs::write(&key, "nor here").unwrap();
        let error = format!("{:#}", ServerTls::load(&cert, &key).unwrap_err());
        assert!(error.contains("holds no certificate") && error.contains("tls.crt"), "{error}");

        write_pair(dir.path(), "a.example");
        let other = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let error = format!("{:#}", ServerTls::load(&cert, &key).unwrap_err());
        assert!(error.contains("does not go with the certificate"), "{error}");
    }
}
