//! Certificates for tests of TLS, made with rcgen: a CA, a leader certificate it
//! signed (for `localhost` and `127.0.0.1`, as cert-manager would issue one), and a
//! second, unrelated CA for the "wrong CA" cases. PEM files in a temporary
//! directory, readable by their owner only.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug)]
pub struct TestCertificates {
    pub dir: tempfile::TempDir,
    /// The CA that signed the leader's certificate.
    pub ca: PathBuf,
    /// The leader's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A CA that signed nothing of the farm's.
    pub other_ca: PathBuf,
}

fn write(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .mode(0o600)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap();
}

fn new_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (params, key, cert.pem())
}

impl TestCertificates {
    /// A fresh CA and a leader certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> TestCertificates {
        let dir = tempfile::Builder::new().prefix("kiln-tls-").tempdir().expect("a temporary directory");
        let (ca_params, ca_key, ca_pem) = new_ca("Kiln test CA");
        let (_, _, other_pem) = new_ca("Another CA");
        let certs = TestCertificates {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            other_ca: dir.path().join("other-ca.crt"),
            dir,
        };
        write(&certs.ca, &ca_pem);
        write(&certs.other_ca, &other_pem);
        certs.issue(&Issuer::new(ca_params, ca_key));
        certs
    }

    /// Writes a new leader certificate and key, signed by `issuer`, over the files.
    fn issue(&self, issuer: &Issuer<'_, KeyPair>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, "kiln leader");
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, issuer).expect("a certificate signed by the CA");
        write(&self.cert, &cert.pem());
        write(&self.key, &key.serialize_pem());
    }

    /// `kiln server` options that serve with these certificates and trust the CA.
    pub fn server_options(&self) -> Vec<String> {
        vec![
            format!("--tls-cert={}", self.cert.display()),
            format!("--tls-key={}", self.key.display()),
            format!("--tls-ca={}", self.ca.display()),
        ]
    }

    /// An HTTP client that trusts the CA only.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .expect("an HTTP client")
    }
}

impl Default for TestCertificates {
    fn default() -> Self {
        Self::new()
    }
}
