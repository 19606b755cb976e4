//! The reloader: three triggers (directory watch, SIGHUP, `POST /admin/reload`), one path.
//!
//! Each reload reads the file, parses, validates and compiles a complete snapshot, reconciles
//! the upstream pools (so no published rule names a pool that does not exist yet), and only
//! then swaps the snapshot in. On any error the running snapshot stays, the error is logged
//! with `line:column`, the failure is counted and `/admin/config` shows it.
//!
//! The watcher watches the config file's *directory*: editors replace files by rename and
//! Kubernetes swaps a `..data` symlink, and neither is seen by a watch on the file itself. Any
//! event in the directory, after a short quiet period, makes the reloader compare the file's
//! hash with the last one it read; only a changed file is reloaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::history::{History, HistoryKind};
use crate::located::{Located, LocatedErrors};
use crate::metrics::Metrics;
use crate::snapshot::{ListenerTls, Live, Snapshot};
use crate::upstream::Upstreams;

/// Userids routed under both files to measure the moved share per rule for the history (the
/// same measure as `graygate diff`, fewer samples: it runs on every reload).
const PLAN_SAMPLES: usize = 1000;

/// What `/admin/config` shows about reloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_error: Option<Vec<Located>>,
    pub last_error_at_ms: Option<u64>,
    /// sha256 of the bytes that failed (the very bytes compiled: the file is read once per
    /// reload, so a fix written meanwhile has another hash and is not skipped as seen).
    pub last_error_sha256: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Keys that changed in the file but only take effect at restart.
    pub restart_needed: Vec<String>,
}

/// The listener's TLS, prepared for a reload: reads and checks the certificate, key and client
/// CA (run off the async runtime) and returns what installs them, or why they cannot be used.
/// Installing cannot fail. (A hook, so that `config` does not depend on `listener`.)
pub type PrepareListenerTls =
    Arc<dyn Fn(&ListenerTls) -> Result<Box<dyn FnOnce() + Send>, String> + Send + Sync>;

/// A hook run after each commit with the new generation (infallible: e.g. `pins.max_pins`
/// handed to the memory pin table).
pub type AfterPublish = Box<dyn Fn(&Snapshot) + Send + Sync>;
/// A hook run on a complete snapshot just before it is published (e.g. the rollouts of §11
/// take over their state, so that the first turn of the new generation sees the right share).
pub type BeforePublish = Box<dyn Fn(&Snapshot) + Send + Sync>;

pub struct Reloader {
    pub path: PathBuf,
    live: Live,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    history: Arc<History>,
    status: Mutex<ReloadStatus>,
    /// sha256 of the last content read (good or bad), so an unchanged file is not re-read.
    last_seen: Mutex<String>,
    lock: tokio::sync::Mutex<()>,
    listener_tls: Mutex<Option<PrepareListenerTls>>,
    after_publish: Mutex<Vec<AfterPublish>>,
    before_publish: Mutex<Vec<BeforePublish>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        live: Live,
        upstreams: Arc<Upstreams>,
        metrics: Metrics,
        history: Arc<History>,
    ) -> Arc<Self> {
        let sha = live.load().sha256.clone();
        Arc::new(Reloader {
            path,
            live,
            upstreams,
            metrics,
            history,
            status: Mutex::new(ReloadStatus::default()),
            last_seen: Mutex::new(sha),
            lock: tokio::sync::Mutex::new(()),
            listener_tls: Mutex::new(None),
            after_publish: Mutex::new(Vec::new()),
            before_publish: Mutex::new(Vec::new()),
        })
    }

    /// Run `f` after every commit, with the generation just published.
    pub fn on_publish(&self, f: AfterPublish) {
        if let Ok(mut v) = self.after_publish.lock() {
            v.push(f);
        }
    }

    /// Re-read the dialog listener's certificate files as part of each reload (prepared with
    /// the rest, installed at the commit).
    pub fn set_listener_tls(&self, f: PrepareListenerTls) {
        if let Ok(mut v) = self.listener_tls.lock() {
            *v = Some(f);
        }
    }

    /// Run `f` on every new generation just before it is published.
    pub fn before_publish(&self, f: BeforePublish) {
        if let Ok(mut v) = self.before_publish.lock() {
            v.push(f);
        }
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reload only when the file's content differs from the last content read.
    pub async fn reload_if_changed(&self, trigger: &str) {
        let Ok(bytes) = tokio::fs::read(&self.path).await else {
            return;
        };
        let sha = crate::config::sha256_hex(&bytes);
        let changed = self.last_seen.lock().map(|l| *l != sha).unwrap_or(true);
        if changed {
            let _ = self.reload(trigger).await;
        }
    }

    /// Reload now. Returns the running generation, or every error found.
    pub async fn reload(&self, trigger: &str) -> Result<u64, LocatedErrors> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.clone();
        // Compiling a large file takes milliseconds: keep it off the async workers.
        // Read once: the hash recorded is that of the bytes compiled, so a fix written while
        // a bad file was being compiled is not skipped as "already seen".
        let began = tokio::time::Instant::now();
        let (sha, loaded) = tokio::task::spawn_blocking(move || {
            let text = crate::config::read(&path)?;
            let sha = crate::config::sha256_hex(text.as_bytes());
            let file = path.display().to_string();
            let loaded = crate::config::load_str(&text, &file, &path);
            Ok::<_, LocatedErrors>((sha, loaded.map(|s| (s, text))))
        })
        .await
        .unwrap_or_else(|e| {
            Err(LocatedErrors(vec![Located::new(
                "",
                0,
                0,
                "",
                format!("reload task failed: {e}"),
            )]))
        })
        .map_or_else(|e| (None, Err(e)), |(sha, r)| (Some(sha), r));
        if let Some(sha) = &sha {
            if let Ok(mut l) = self.last_seen.lock() {
                l.clone_from(sha);
            }
        }
        let result = match loaded {
            Ok((snap, text)) => {
                let current = self.live.load_full();
                if snap.sha256 == current.sha256 {
                    tracing::info!(trigger, generation = current.generation, "config unchanged");
                    Ok(current.generation)
                } else {
                    let compiled = began.elapsed();
                    self.publish(snap, &text, &current, trigger, compiled).await
                }
            }
            Err(errs) => Err(errs),
        };
        match &result {
            Ok(g) => {
                self.metrics.reload(true, Some(*g));
                if let Ok(mut s) = self.status.lock() {
                    s.reloads_ok += 1;
                    s.last_error = None;
                    s.last_error_at_ms = None;
                    s.last_error_sha256 = None;
                }
            }
            Err(errs) => {
                self.metrics.reload(false, None);
                tracing::error!(trigger, errors = %errs, "config reload failed; the running config stays");
                self.history.record(
                    HistoryKind::ReloadFailed,
                    serde_json::json!({
                        "trigger": trigger,
                        "path": self.path.display().to_string(),
                        "running_generation": self.live.load().generation,
                        "sha256": sha,
                        "errors": errs.0.iter().map(|e| serde_json::json!({"line": e.line, "column": e.column, "path": e.path, "message": e.message})).collect::<Vec<_>>(),
                    }),
                );
                if let Ok(mut s) = self.status.lock() {
                    s.reloads_failed += 1;
                    s.last_error = Some(errs.0.clone());
                    s.last_error_at_ms = Some(crate::clock::wall_ms());
                    s.last_error_sha256.clone_from(&sha);
                }
            }
        }
        result
    }

    /// plan → prepare → commit. The plan is pure (what changes, what needs a restart); the
    /// prepare does every fallible step without touching anything live (clients, embedded
    /// backends, certificate files); the commit is one store per pool and one of the snapshot,
    /// and cannot fail. A prepare that fails leaves everything as it was.
    async fn publish(
        &self,
        mut snap: Snapshot,
        text: &str,
        current: &Snapshot,
        trigger: &str,
        compiled: Duration,
    ) -> Result<u64, LocatedErrors> {
        let began = tokio::time::Instant::now();
        // Plan.
        let restart = restart_keys(current, &snap);
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these keys changed but take effect only at restart; the running values stay");
        }
        keep_process_keys(&mut snap, current);
        snap.generation = current.generation + 1;
        let plan = crate::config::diff::diff(current, &snap);
        let moved = crate::config::diff::moved_shares(current, &snap, PLAN_SAMPLES);

        let planned = began.elapsed();

        // Prepare.
        let file = self.path.display().to_string();
        let specs: Vec<_> = snap
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.spec.clone()))
            .collect();
        let prepared = self.upstreams.prepare(&specs).await.map_err(|e| {
            let path = format!("clusters.{}", e.cluster);
            LocatedErrors(vec![Located::at_path(&file, text, &path, e.message)])
        })?;
        let hook = self.listener_tls.lock().ok().and_then(|h| h.clone());
        let install_tls = match (hook, snap.tls.clone()) {
            (Some(prepare), Some(tls)) => {
                let done = tokio::task::spawn_blocking(move || prepare(&tls))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match done {
                    Ok(install) => Some(install),
                    Err(e) => {
                        return Err(LocatedErrors(vec![Located::at_path(&file, text, "tls", e)]))
                    }
                }
            }
            _ => None,
        };

        let prepared_at = began.elapsed();

        // Commit: nothing below fails.
        let committed = self.upstreams.commit(prepared);
        snap.pools = committed.pools;
        snap.views = committed.views;
        let generation = snap.generation;
        let applied = serde_json::json!({
            "generation": generation,
            "sha256": snap.sha256,
            "trigger": trigger,
            "path": file,
            "plan": {"changes": plan, "rules": moved},
        });
        if let Ok(hooks) = self.before_publish.lock() {
            for h in hooks.iter() {
                h(&snap);
            }
        }
        self.live.store(Arc::new(snap));
        if let Some(install) = install_tls {
            install();
        }
        let live = self.live.load();
        if let Ok(hooks) = self.after_publish.lock() {
            for h in hooks.iter() {
                h(&live);
            }
        }
        if let Ok(mut s) = self.status.lock() {
            s.restart_needed = restart;
        }
        // Where a reload's time went, for the operator who finds reloads slow.
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            generation,
            sha256 = %live.sha256,
            changes = %plan,
            read_and_compile_ms = ms(compiled),
            plan_ms = ms(planned),
            prepare_ms = ms(prepared_at - planned),
            publish_ms = ms(began.elapsed() - prepared_at),
            "config applied"
        );
        self.history.record(HistoryKind::Applied, applied);
        self.upstreams.drop_empty_retired(&live.cluster_ids());
        Ok(generation)
    }

    /// Watch the config's directory; reload after events settle. Runs until the handle is
    /// aborted.
    pub fn spawn_watch(
        self: &Arc<Self>,
        debounce: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        use notify::Watcher;
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                // A full channel already has a pending wake-up: coalesce.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| e.to_string())?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                // Quiet period: let the writer finish.
                loop {
                    match tokio::time::timeout(debounce, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                me.reload_if_changed("watch").await;
            }
        }))
    }

    /// Reload on SIGHUP.
    #[cfg(unix)]
    pub fn spawn_sighup(self: &Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                let _ = me.reload("sighup").await;
            }
        }))
    }
}

fn restart_keys(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut v = Vec::new();
    if old.listen != new.listen {
        v.push("listen".to_string());
    }
    if old.admin != new.admin {
        v.push("admin".to_string());
    }
    // Changed certificate paths are read by the reload; only turning TLS on or off needs a
    // new listener.
    if old.tls.is_some() != new.tls.is_some() {
        v.push("tls (on/off)".to_string());
    }
    if old.store != new.store {
        v.push("pins.store".to_string());
    }
    if old.listen_proxy_protocol != new.listen_proxy_protocol {
        v.push("listen_proxy_protocol".to_string());
    }
    if old.otlp != new.otlp {
        v.push("tracing.otlp".to_string());
    }
    let (o, n) = (&old.limits, &new.limits);
    if o.max_connections != n.max_connections
        || o.header_read_timeout != n.header_read_timeout
        || o.max_connections_per_ip != n.max_connections_per_ip
        || o.idle_timeout != n.idle_timeout
        || o.max_connection_age != n.max_connection_age
        || o.send_timeout != n.send_timeout
    {
        v.push("limits (connection-level)".to_string());
    }
    v
}

/// The keys read once at start keep their running values in the new snapshot, so that
/// `/admin/config` shows what is in effect (the file's new values are in `restart_needed`).
fn keep_process_keys(new: &mut Snapshot, running: &Snapshot) {
    new.listen = running.listen;
    new.admin = running.admin;
    new.store = running.store.clone();
    new.listen_proxy_protocol = running.listen_proxy_protocol;
    new.limits.max_connections = running.limits.max_connections;
    new.limits.header_read_timeout = running.limits.header_read_timeout;
    new.limits.max_connections_per_ip = running.limits.max_connections_per_ip;
    new.limits.idle_timeout = running.limits.idle_timeout;
    new.limits.max_connection_age = running.limits.max_connection_age;
    new.limits.send_timeout = running.limits.send_timeout;
    new.otlp = running.otlp.clone();
    if new.tls.is_some() != running.tls.is_some() {
        new.tls = running.tls.clone();
    }
}
