//! `graygate call`: run one call through a gateway or an ODFS and print each turn.

use std::process::ExitCode;

use clap::Args;

use super::Common;

#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Base URL of the gateway or ODFS.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

pub fn run(_common: &Common, _args: CallArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("call is not built yet")
}
