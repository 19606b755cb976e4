//! `graygate serve`: run the gateway until SIGTERM/SIGINT, then drain and exit 0.

use std::process::ExitCode;

use super::{Common, ConfigArg};
use crate::app::{App, StartError, StartOptions};

pub fn run(common: &Common, args: ConfigArg) -> anyhow::Result<ExitCode> {
    let _guard = crate::telemetry::init(common.json_logs());
    let rt = runtime()?;
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

/// The runtime for the CPUs this process may use (`available_parallelism` honours the CPU
/// affinity mask, so `taskset -c 1 graygate` sees one). On one CPU a current-thread runtime
/// serves every connection from the thread that polls the sockets: no hand-off between a worker
/// and the I/O driver, no work-stealing bookkeeping, no cross-thread wake-ups. With more CPUs,
/// one worker per CPU.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cpus);
        b
    };
    builder.enable_all().thread_name("graygate").build()
}
