//! `embedded:` clusters: the reference ODFS backend started in-process on loopback.
//!
//! `instances` listeners on `127.0.0.1:0` share one [`Backend`] (one call store), as the nodes
//! of a real ODFS cluster share call state, so any `balance` works. The gateway then talks to
//! them over loopback HTTP exactly as to any upstream. Dropping the [`EmbeddedCluster`] stops
//! the servers.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::oneshot;

use super::EmbeddedSpec;
use crate::backend::{Backend, BackendOptions};

pub struct EmbeddedCluster {
    pub addrs: Vec<SocketAddr>,
    _stop: Vec<oneshot::Sender<()>>,
}

pub async fn start(spec: &EmbeddedSpec) -> Result<EmbeddedCluster, String> {
    let opts = BackendOptions {
        label: spec.label.clone(),
        flows: spec.flows.as_ref().map(PathBuf::from),
        ..BackendOptions::default()
    };
    let backend = Backend::new(opts).map_err(|e| e.to_string())?;
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..spec.instances.max(1) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("embedded backend: {e}"))?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
        let (tx, rx) = oneshot::channel::<()>();
        let b = backend.clone();
        tokio::spawn(async move {
            if let Err(e) = b
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
            {
                tracing::error!(error = %e, "embedded backend stopped");
            }
        });
        stops.push(tx);
    }
    tracing::info!(label = %spec.label, instances = addrs.len(), addrs = ?addrs, "embedded backend started");
    Ok(EmbeddedCluster {
        addrs,
        _stop: stops,
    })
}
