//! The TLS flags of a member (`--tls-cert`, `--tls-key`, `--tls-ca`): what the
//! leader's port and a worker's /healthz serve with, and the CA a member trusts for
//! the leader.

use std::path::PathBuf;

use clap::Args;

use crate::config::command_line::CommandLine;

/// TLS of a member: what it serves with (the leader's port, a worker's /healthz)
/// and the CA it trusts for the leader.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct TlsArgs {
    /// A PEM certificate chain: the leader serves its HTTP API and gRPC over TLS
    /// (and a worker its /healthz). Needs --tls-key. Read again when the file changes.
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The PEM CA certificate that signed the leader's certificate: members trust
    /// only it when the leader URL is https://.
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key to serve with, when given.
    pub fn server(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.tls_cert.clone()?, self.tls_key.clone()?))
    }

    /// These flags, for a member's command line.
    pub(crate) fn to_args(&self, line: &mut CommandLine) {
        line.opt_path("--tls-cert", &self.tls_cert);
        line.opt_path("--tls-key", &self.tls_key);
        line.opt_path("--tls-ca", &self.tls_ca);
    }
}
