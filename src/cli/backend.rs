//! `graygate backend`: the reference ODFS backend on its own (spec §7).
//!
//! Exit codes: 0 after a clean stop (Ctrl-C or SIGTERM), 2 when the flow or tenants file is
//! invalid or the address cannot be bound.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{Common, LogFormat};
use crate::backend::{Backend, BackendOptions};

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Instance label, reported in the `x-odfs-instance` header of every answer.
    #[arg(long, default_value = "odfs")]
    pub label: String,
    /// Flow file (docs/flows.md); the built-in demo flow when left out.
    #[arg(long)]
    pub flows: Option<PathBuf>,
    /// Tenants file for the token API; any token is accepted when left out.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// Calls with no turn for this long are forgotten.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Consecutive sys_err turns after which a call is released.
    #[arg(long, default_value_t = 3)]
    pub sys_err_cap: u32,
}

pub fn run(common: &Common, args: BackendArgs) -> anyhow::Result<ExitCode> {
    init_logs(common);
    let opts = BackendOptions {
        label: args.label.clone(),
        flows: args.flows.clone(),
        tenants: args.tenants.clone(),
        idle_timeout: args.idle_timeout,
        sys_err_cap: args.sys_err_cap,
    };
    let backend = match Backend::new(opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "graygate backend: listening on http://{addr} (label {}, flows {}, tenants {})",
            backend.label(),
            args.flows
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in demo".into()),
            args.tenants
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none: any token".into()),
        );
        backend
            .serve(listener, stop_signal())
            .await
            .context("serving")?;
        eprintln!("graygate backend: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A plain tracing subscriber on stderr (`RUST_LOG` filters; default `info`).
fn init_logs(common: &Common) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match common.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
