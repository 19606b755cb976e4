//! `graygate serve`: run the gateway until SIGTERM/SIGINT, then drain and exit 0.

use std::process::ExitCode;

use super::{Common, ConfigArg};
use crate::app::{App, StartError, StartOptions};

pub fn run(common: &Common, args: ConfigArg) -> anyhow::Result<ExitCode> {
    let _guard = crate::telemetry::init(common.json_logs());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("graygate")
        .build()?;
    rt.block_on(async move {
        let app = match App::start(&args.config, StartOptions::default()).await {
            Ok(a) => a,
            Err(StartError::Config(errs)) => {
                tracing::error!(errors = %errs, "invalid config");
                eprintln!("{errs}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        let (dialog, admin) = app.bind().await?;
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            crate::lifecycle::termination_signal().await;
            tracing::info!("termination signal received");
            shutdown.trigger();
        });
        app.run(dialog, admin).await;
        Ok(ExitCode::SUCCESS)
    })
}
