//! `kiln logs`: a pipeline's build log and diagnostics, as the leader keeps them.

use std::process::ExitCode;

use clap::Args;

use crate::client::Client;
use crate::config::leader::LeaderArgs;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A pipeline id or name.
    pub pipeline: String,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// `kiln logs`: a pipeline's build log and diagnostics.
pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.leader)?;
    print!("{}", client.log(&args.pipeline).await?);
    Ok(ExitCode::SUCCESS)
}
