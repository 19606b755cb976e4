//! The command line (spec §1): clap definitions, and one file per command.
//!
//! `anyhow` lives only here, at the edge; every command returns `anyhow::Result<ExitCode>`.
//! Exit codes: 0 success; 1 a failed check, a failed turn or an invalid config; 2 a usage or
//! start-up error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod backend;
mod call;
mod check;
mod diff;
mod explain;
mod rollout;
mod serve;

#[derive(Debug, Parser)]
#[command(
    name = "graygate",
    version,
    about = "Gray-routing gateway for ODFS dialog interfaces"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Log format: text (default on a terminal) or json (default otherwise). Filter with RUST_LOG.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Common {
    pub fn json_logs(&self) -> Option<bool> {
        self.log_format.map(|f| f == LogFormat::Json)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Serve(ConfigArg),
    /// Validate a config file; print a summary, or every error as file:line:column: message.
    Check(ConfigArg),
    /// Show which rule and cluster a new call would get (no network, no pins).
    Explain(explain::ExplainArgs),
    /// Before applying a change: what share of new calls each rule would move.
    Diff(diff::DiffArgs),
    /// Print the JSON Schema of routes.yaml.
    Schema,
    /// Run the reference ODFS dialog backend on its own.
    Backend(backend::BackendArgs),
    /// Run one call through a gateway or an ODFS and print each turn.
    Call(call::CallArgs),
    /// Watch and drive the progressive rollouts of a running gateway.
    Rollout(rollout::RolloutArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// The routes file.
    #[arg(short = 'c', long = "config", default_value = "routes.yaml")]
    pub config: PathBuf,
}

/// Parse the command line, run the command, map errors to exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::run(
            &cli.common,
            ConfigArg {
                config: PathBuf::from("routes.yaml"),
            },
        ),
        Some(Command::Serve(args)) => serve::run(&cli.common, args),
        Some(Command::Check(args)) => check::run(args),
        Some(Command::Explain(args)) => explain::run(args),
        Some(Command::Diff(args)) => diff::run(args),
        Some(Command::Schema) => {
            println!("{}", schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Backend(args)) => backend::run(&cli.common, args),
        Some(Command::Call(args)) => call::run(&cli.common, args),
        Some(Command::Rollout(args)) => rollout::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("graygate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The JSON Schema of routes.yaml, generated from the raw config types.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(crate::config::raw::RoutesFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}
