//! Shutdown, drain tracking and readiness.
//!
//! `Shutdown` is a watch channel that flips once; listeners stop accepting when it flips and
//! connections finish their in-flight requests (hyper's graceful shutdown). `Readiness` is the
//! latch `/readyz` reads: ready once a config is loaded and the dialog listener accepts, not
//! ready from the first moment of shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown begins.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    config_loaded: AtomicBool,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    /// Open connections being drained (for logs).
    pub open_connections: AtomicUsize,
}

impl Readiness {
    pub fn set_config_loaded(&self) {
        self.config_loaded.store(true, Ordering::SeqCst);
    }
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.config_loaded.load(Ordering::SeqCst)
            && self.listening.load(Ordering::SeqCst)
            && !self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
