//! `graygate serve`: run the gateway until SIGTERM/SIGINT, then drain and exit 0.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{Common, ConfigArg};
use crate::app::{App, StartError, StartOptions};

pub fn run(common: &Common, args: ConfigArg) -> anyhow::Result<ExitCode> {
    let guard = crate::telemetry::init(common.json_logs());
    // Before any socket: the default max_connections is derived from what this leaves.
    if let Some((soft, hard)) = crate::fdlimit::raise_nofile() {
        tracing::info!(soft, hard, "file descriptor limit (soft raised to hard)");
    }
    let rt = runtime()?;
    // When shutdown began, and the drain grace: the log flush at exit must end within it.
    let stopping: Arc<OnceLock<(Instant, Duration)>> = Arc::default();
    let stop = stopping.clone();
    let result = rt.block_on(async move {
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
        let grace = app.grace();
        tokio::spawn(async move {
            crate::lifecycle::termination_signal().await;
            let _ = stop.set((Instant::now(), grace));
            tracing::info!("termination signal received");
            shutdown.trigger();
        });
        app.run(dialog, admin).await;
        Ok(ExitCode::SUCCESS)
    });
    // Tasks still blocked (a stuck disk, a DNS lookup) must not hold the exit either.
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Some(g) = guard {
        let limit = match stopping.get() {
            Some((began, grace)) => grace.saturating_sub(began.elapsed()),
            None => Duration::ZERO,
        };
        g.finish(limit.max(MIN_FLUSH));
    }
    result
}

/// The log flush at exit gets at least this long, even when the drain used the whole grace.
const MIN_FLUSH: Duration = Duration::from_millis(500);

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
