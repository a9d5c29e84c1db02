//! How a command reaches the leader: its URL, the CA it trusts and the API token
//! (`LeaderArgs`, flattened into every client command), and the API token's own
//! flags (`ApiTokenArgs`, flattened into the clients, `kiln ci-env` and `kiln
//! server`). Also where the local farm of `kiln up` is by default, since a client
//! falls back to its token.

use std::path::PathBuf;

use clap::Args;

use crate::config::secret::{SecretFile, given_or_read};

/// The leader of the local farm that `kiln up` starts by default.
pub const DEFAULT_PORT: u16 = 8470;

/// The default directory of `kiln up`'s state.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".kiln")
}

/// Where the leader is, for the client commands.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// The leader's URL.
    #[arg(long = "leader", env = "KILN_LEADER", default_value_t = format!("http://127.0.0.1:{DEFAULT_PORT}"))]
    pub url: String,
    /// Without a token, the token of a `kiln up` run from this directory
    /// (`.kiln/api-token`) is used when there is one.
    #[command(flatten)]
    pub api: ApiTokenArgs,
    /// The PEM CA certificate that signed the leader's certificate, for an
    /// https:// leader: only it is trusted. Without it, the system's CAs are.
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl LeaderArgs {
    /// The token to send: given, from its file, or the local farm's.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.api.read()? {
            return Ok(Some(token));
        }
        let local = default_data_dir().join("api-token");
        if !local.is_file() {
            return Ok(None);
        }
        let file = SecretFile { path: &local, what: "the local farm's API token file", flag: "--api-token-file" };
        Ok(Some(file.read()?).filter(|t| !t.is_empty()))
    }
}

/// The API token a client sends or a leader wants: given, or in a file. Declared
/// once, flattened into every command that takes it (the clients, `kiln ci-env`,
/// `kiln server`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ApiTokenArgs {
    /// The API token (`Authorization: Bearer <token>`).
    #[arg(long, env = "KILN_API_TOKEN", hide_env_values = true, conflicts_with = "api_token_file")]
    pub api_token: Option<String>,
    /// A file holding the API token (a mounted Secret): read with a warning when
    /// users other than its owner can read it.
    #[arg(long, env = "KILN_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

impl ApiTokenArgs {
    /// The token given, or read from its file; None when neither is.
    pub fn read(&self) -> anyhow::Result<Option<String>> {
        let file = self.api_token_file.as_deref().map(|path| SecretFile {
            path,
            what: "the API token file",
            flag: "--api-token-file",
        });
        given_or_read(self.api_token.as_ref(), file)
    }
}
