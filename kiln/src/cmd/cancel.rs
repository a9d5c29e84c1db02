//! `kiln cancel`: stops a build in flight (or waiting); the pipeline ends
//! `cancelled` and its worker stops the build at its next heartbeat.

use std::process::ExitCode;

use clap::Args;

use crate::client::Client;
use crate::config::leader::LeaderArgs;

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// A pipeline id or name.
    pub pipeline: String,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// `kiln cancel`: the build stops; the pipeline ends `cancelled`.
pub async fn run(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    let record = client.cancel(&args.pipeline).await?;
    println!(
        "{} (id {}, version {}) cancelled; its worker stops the build at its next heartbeat. `kiln submit` builds it again",
        record.name, record.id, record.version
    );
    Ok(ExitCode::SUCCESS)
}
