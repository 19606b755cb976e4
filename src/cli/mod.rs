//! The command line (spec §1): clap definitions, and one file per command.
//!
//! `anyhow` lives only here, at the edge; every command returns `anyhow::Result<ExitCode>` and
//! documents its exit codes. Exit codes: 0 success, 1 a failed check or turn, 2 a usage or
//! start-up error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod backend;
mod call;

#[derive(Debug, Parser)]
#[command(name = "graygate", version, about = "Gray-routing gateway for ODFS dialog interfaces")]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Log format: text (default on a terminal) or json (default otherwise).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Serve(ServeArgs),
    /// Run the reference ODFS dialog backend on its own.
    Backend(backend::BackendArgs),
    /// Run one call through a gateway or an ODFS and print each turn.
    Call(call::CallArgs),
}

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// The routes file.
    #[arg(short = 'c', long = "config", default_value = "routes.yaml")]
    pub config: PathBuf,
}

/// Parse the command line, run the command, map errors to exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Backend(args)) => backend::run(&cli.common, args),
        Some(Command::Call(args)) => call::run(&cli.common, args),
        Some(Command::Serve(_)) | None => {
            eprintln!("graygate: serve is not built yet");
            Ok(ExitCode::from(2))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("graygate: {e:#}");
            ExitCode::from(2)
        }
    }
}
