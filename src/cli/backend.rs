//! `graygate backend`: the reference ODFS backend on its own (spec §7).

use std::process::ExitCode;

use clap::Args;

use super::Common;

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
}

pub fn run(_common: &Common, _args: BackendArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the backend is not built yet")
}
