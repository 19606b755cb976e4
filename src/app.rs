//! The composition root: build every part from a config file, run the listeners, shut down.
//!
//! `App::start` loads and publishes generation 1 (pools reconciled, embedded backends started,
//! pins restored from the snapshot file); `App::run` takes already-bound listeners (tests bind
//! port 0) and returns when shutdown has drained them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::config::reload::Reloader;
use crate::history::{History, HistoryKind};
use crate::lifecycle::{Readiness, Shutdown};
use crate::listener::guard::ConnLimits;
use crate::listener::{self, tls::TlsAcceptor, ListenOptions};
use crate::located::LocatedErrors;
use crate::metrics::Metrics;
use crate::pins::memory::MemoryStore;
use crate::pins::persist::PinFile;
use crate::pins::redis::RedisStore;
use crate::pins::Store;
use crate::proxy::{Peer, Proxy};
use crate::rollout::outcome::Outcomes;
use crate::rollout::Rollouts;
use crate::snapshot::{Live, StoreSpec};
use crate::upstream::Upstreams;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(LocatedErrors),
    #[error("{0}")]
    Other(String),
}

pub struct App {
    pub live: Live,
    pub upstreams: Arc<Upstreams>,
    pub pins: Store,
    pub metrics: Metrics,
    pub reloader: Arc<Reloader>,
    pub readiness: Arc<Readiness>,
    pub shutdown: Shutdown,
    pub proxy: Arc<Proxy>,
    pub admin: Arc<Admin>,
    pub history: Arc<History>,
    /// The continuous `pins.snapshot` writer (memory store with a snapshot file).
    pub pin_file: Option<Arc<PinFile>>,
    pub rollouts: Arc<Rollouts>,
    tls: Option<Arc<TlsAcceptor>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The history's first event: generation 1, everything in it new.
fn start_event(snap: &crate::snapshot::Snapshot) -> serde_json::Value {
    let names = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
    serde_json::json!({
        "generation": snap.generation,
        "sha256": snap.sha256,
        "trigger": "start",
        "path": snap.path.display().to_string(),
        "plan": {
            "changes": {
                "clusters_added": names(snap.clusters.iter().map(|c| &*c.name).collect()),
                "clusters_removed": [],
                "clusters_draining": names(snap.clusters.iter().filter(|c| c.spec.drain).map(|c| &*c.name).collect()),
                "clusters_undrained": [],
                "clusters_changed": [],
                "rules_added": names(snap.routing.rules.iter().map(|r| &*r.name).collect()),
                "rules_removed": [],
                "rules_changed": [],
                "settings_changed": [],
            },
            "rules": [],
        },
    })
}

/// The admin listener's own bounds (docs/resilience.md): probes and scrapers make short
/// requests, so its connections are cut early, and at its cap (`connection_caps`) the
/// longest-idle one is closed to let a new one in.
pub const ADMIN_LIMITS: ConnLimits = ConnLimits {
    header_read_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(10),
    max_connection_age: Duration::ZERO,
    send_timeout: Duration::from_secs(10),
};

/// Options that are not in the config file.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Watch the config directory for changes.
    pub watch: bool,
    /// Reload on SIGHUP.
    pub sighup: bool,
    pub debounce: Duration,
    /// How often expired pins and empty retired clusters are swept.
    pub sweep_every: Duration,
    /// How often the rollouts of §11 are judged.
    pub judge_every: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            watch: true,
            sighup: true,
            debounce: Duration::from_millis(200),
            sweep_every: Duration::from_secs(1),
            judge_every: Duration::from_millis(250),
        }
    }
}

impl App {
    pub async fn start(path: &Path, opts: StartOptions) -> Result<App, StartError> {
        let p = path.to_path_buf();
        let mut snap = tokio::task::spawn_blocking(move || crate::config::load(&p))
            .await
            .map_err(|e| StartError::Other(e.to_string()))?
            .map_err(StartError::Config)?;
        let metrics = Metrics::new();
        let upstreams = Arc::new(Upstreams::new(metrics.clone()));
        let specs: Vec<_> = snap
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.spec.clone()))
            .collect();
        let committed = upstreams
            .reconcile(&specs)
            .await
            .map_err(|e| StartError::Other(e.to_string()))?;
        snap.pools = committed.pools;
        snap.views = committed.views;
        snap.generation = 1;
        let tls = match &snap.tls {
            Some(t) => Some(Arc::new(TlsAcceptor::new(t).map_err(StartError::Other)?)),
            None => None,
        };
        let mut pin_file = None;
        let pins = match &snap.store {
            StoreSpec::Memory { snapshot } => {
                let m = MemoryStore::new(metrics.clone());
                m.set_max_pins(snap.pins.max_pins);
                if let Some(file) = snapshot {
                    pin_file = Some(open_pin_file(file.clone(), m.clone()).await?);
                }
                Store::Memory(m)
            }
            StoreSpec::Redis {
                url,
                key_prefix,
                timeout,
            } => Store::Redis(
                RedisStore::new(
                    url,
                    key_prefix,
                    *timeout,
                    metrics.clone(),
                    crate::pins::redis::password_from_env().map_err(StartError::Other)?,
                )
                .map_err(StartError::Other)?,
            ),
        };
        let rollouts = Rollouts::new(metrics.clone());
        if let Some(pf) = &pin_file {
            // The rollouts' state is a section of pins.snapshot, written with the pins.
            if let Some(lines) = pf.take_restored(crate::rollout::SECTION) {
                let (n, bad) = rollouts.restore_lines(&lines);
                tracing::info!(
                    rollouts = n,
                    unreadable = bad,
                    "rollout state read from pins.snapshot"
                );
            }
            pf.add_section(Arc::new(crate::rollout::StateSection(rollouts.clone())));
        }
        if let Store::Redis(r) = &pins {
            rollouts.share_via(crate::rollout::shared::Shared::new(r.clone()));
        }
        rollouts.bind(&snap.rollouts);
        let outcomes = Outcomes::new(metrics.clone(), rollouts.clone());
        {
            let outcomes = outcomes.clone();
            pins.set_on_release(Arc::new(move |pin, outcome| {
                outcomes.released(pin, outcome)
            }));
        }
        metrics.reload(true, Some(1));
        let history = Arc::new(History::default());
        history.record(HistoryKind::Applied, start_event(&snap));
        {
            let history = history.clone();
            rollouts.on_transition(Box::new(move |detail| {
                history.record(HistoryKind::Rollout, detail.clone())
            }));
        }
        let live: Live = Arc::new(ArcSwap::from_pointee(snap));
        let reloader = Reloader::new(
            path.to_path_buf(),
            live.clone(),
            upstreams.clone(),
            metrics.clone(),
            history.clone(),
        );
        if let Some(acceptor) = &tls {
            let acceptor = acceptor.clone();
            reloader.set_listener_tls(Arc::new(move |t| {
                let config = TlsAcceptor::prepare(t)?;
                let acceptor = acceptor.clone();
                Ok(Box::new(move || acceptor.install(config)))
            }));
        }
        if let Store::Memory(m) = &pins {
            // pins.max_pins follows reloads (a lower value evicts as new pins come).
            let m = m.clone();
            reloader.on_publish(Box::new(move |s| m.set_max_pins(s.pins.max_pins)));
        }
        {
            let rollouts = rollouts.clone();
            reloader.before_publish(Box::new(move |s| rollouts.bind(&s.rollouts)));
        }
        let readiness = Arc::new(Readiness::default());
        readiness.set_config_loaded();
        let spans = live
            .load()
            .otlp
            .as_ref()
            .map(|collector| crate::trace::otlp::Exporter::start(collector, &metrics.registry));
        let proxy = Proxy::new(
            live.clone(),
            upstreams.clone(),
            pins.clone(),
            metrics.clone(),
            spans,
            outcomes,
        );
        let admin = Arc::new(Admin {
            live: live.clone(),
            upstreams: upstreams.clone(),
            pins: pins.clone(),
            metrics: metrics.clone(),
            reloader: reloader.clone(),
            readiness: readiness.clone(),
            history: history.clone(),
            pin_file: pin_file.clone(),
            rollouts: rollouts.clone(),
        });
        let mut tasks = Vec::new();
        tasks.push(rollouts.spawn_judge(opts.judge_every));
        if opts.watch {
            match reloader.spawn_watch(opts.debounce) {
                Ok(h) => tasks.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config directory; reload with SIGHUP or POST /admin/reload")
                }
            }
        }
        #[cfg(unix)]
        if opts.sighup {
            match reloader.spawn_sighup() {
                Ok(h) => tasks.push(h),
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
            }
        }
        match &pins {
            Store::Memory(m) => tasks.push(m.spawn_sweeper(opts.sweep_every)),
            Store::Redis(r) => tasks.push(r.spawn_keeper(opts.sweep_every)),
        }
        {
            let (live, upstreams) = (live.clone(), upstreams.clone());
            let every = opts.sweep_every;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    upstreams.drop_empty_retired(&live.load().cluster_ids());
                }
            }));
        }
        Ok(App {
            live,
            upstreams,
            pins,
            metrics,
            reloader,
            readiness,
            shutdown: Shutdown::new(),
            proxy,
            admin,
            history,
            pin_file,
            rollouts,
            tls,
            tasks,
        })
    }

    /// Bind the addresses of the config.
    pub async fn bind(&self) -> std::io::Result<(TcpListener, TcpListener)> {
        let s = self.live.load();
        let dialog = listen(s.listen)
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen {}: {e}", s.listen)))?;
        let admin = listen(s.admin)
            .map_err(|e| std::io::Error::new(e.kind(), format!("admin {}: {e}", s.admin)))?;
        Ok((dialog, admin))
    }

    /// How long in-flight requests may take to finish once shutdown begins.
    pub fn grace(&self) -> Duration {
        self.live.load().limits.request_timeout + Duration::from_secs(1)
    }

    /// Serve until shutdown, then drain and save pins.
    pub async fn run(self, dialog: TcpListener, admin: TcpListener) {
        let snap = self.live.load_full();
        let grace = self.grace();
        let dialog_addr: Option<SocketAddr> = dialog.local_addr().ok();
        let admin_addr: Option<SocketAddr> = admin.local_addr().ok();
        let caps = connection_caps(&snap);
        let l = &snap.limits;
        let dialog_opts = ListenOptions {
            name: "dialog",
            max_connections: caps.dialog as usize,
            reserve_fds: 0,
            max_connections_per_ip: l.max_connections_per_ip as usize,
            limits: ConnLimits {
                header_read_timeout: l.header_read_timeout,
                idle_timeout: l.idle_timeout,
                max_connection_age: l.max_connection_age,
                send_timeout: l.send_timeout,
            },
            evict_idle_at_cap: false,
            grace,
            tls: self.tls.clone(),
            proxy_protocol: snap.listen_proxy_protocol,
            // Plain TCP: the dialog fast path first (it hands hyper what it does not take).
            front: match self.tls {
                Some(_) => None,
                None => Some(Arc::new(crate::proxy::fast::FastFront::new(
                    self.proxy.clone(),
                ))),
            },
        };
        let admin_opts = ListenOptions {
            name: "admin",
            max_connections: caps.admin as usize,
            // Spare descriptors the admin listener gives up to accept a probe or a scrape when
            // the process is out of them: /healthz and /metrics stay answerable.
            reserve_fds: 4,
            max_connections_per_ip: 0,
            limits: ADMIN_LIMITS,
            evict_idle_at_cap: true,
            grace,
            tls: None,
            proxy_protocol: false,
            front: None,
        };
        let proxy = self.proxy.clone();
        let d = tokio::spawn(listener::serve(
            dialog,
            dialog_opts,
            self.metrics.clone(),
            self.shutdown.clone(),
            move |req, addr, https| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, Peer { addr, https }).await }
            },
        ));
        let admin_svc = self.admin.clone();
        // The admin listener answers for as long as the dialog listener drains (/readyz 503,
        // /healthz and /metrics as usual, spec §4) and closes last: it has its own signal,
        // given once the dialog listener is done.
        let admin_stop = Shutdown::new();
        let a = tokio::spawn(listener::serve(
            admin,
            admin_opts,
            self.metrics.clone(),
            admin_stop.clone(),
            move |req, _addr, _https| {
                let admin = admin_svc.clone();
                async move { admin.handle(req).await }
            },
        ));
        self.readiness.set_listening();
        tracing::info!(dialog = ?dialog_addr, admin = ?admin_addr, generation = snap.generation, "graygate listening");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        self.shutdown.wait().await;
        self.readiness.set_shutting_down();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        let _ = d.await;
        admin_stop.trigger();
        let _ = a.await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(f) = self.pin_file.clone() {
            // The last write, after the drain; bounded so that a stuck disk cannot hold the exit.
            let done = tokio::task::spawn_blocking(move || f.finish(grace)).await;
            if !matches!(done, Ok(true)) {
                tracing::error!(
                    "the last pin snapshot write did not finish within the grace period"
                );
            }
        }
        tracing::info!("shutdown complete");
    }

    pub fn config_path(&self) -> PathBuf {
        self.reloader.path.clone()
    }
}

/// The dialog and admin connection caps: `limits.max_connections` when set, else derived from
/// the descriptor limit (HAProxy's way, see [`crate::fdlimit`]).
fn connection_caps(snap: &crate::snapshot::Snapshot) -> crate::fdlimit::Budget {
    let embedded = snap.clusters.iter().any(|c| c.spec.embedded.is_some());
    let nofile = crate::fdlimit::nofile();
    let derived = nofile.map(|n| crate::fdlimit::derive(n, if embedded { 3 } else { 2 }));
    let dialog = match (snap.limits.max_connections, derived) {
        (Some(n), _) => u64::from(n),
        (None, Some(b)) => b.dialog,
        (None, None) => crate::fdlimit::DEFAULT_MAX_CONNECTIONS,
    };
    let admin = derived.map_or(crate::fdlimit::ADMIN_MAX_CONNECTIONS, |b| b.admin);
    if let (Some(n), Some(b)) = (nofile, derived) {
        let reserve = n.saturating_sub(dialog * if embedded { 3 } else { 2 });
        if snap.limits.max_connections.is_some() && dialog > b.dialog {
            tracing::warn!(nofile = n, max_connections = dialog, fits = b.dialog, "limits.max_connections is more than the descriptor limit can carry (each connection may need an upstream one); past it, turns get 503 GW.LOCAL_RESOURCES");
        } else {
            tracing::info!(
                nofile = n,
                max_connections = dialog,
                derived = snap.limits.max_connections.is_none(),
                admin_max_connections = admin,
                reserve,
                "connection caps"
            );
        }
    }
    crate::fdlimit::Budget { dialog, admin }
}

/// Read `pins.snapshot` into the table and start its continuous writer (off the runtime: it
/// reads and writes the file).
async fn open_pin_file(file: PathBuf, store: MemoryStore) -> Result<Arc<PinFile>, StartError> {
    tokio::task::spawn_blocking(move || PinFile::open(&file, store).0)
        .await
        .map_err(|e| StartError::Other(e.to_string()))
}

/// Connections the kernel may hold for a listener before they are accepted (clamped to
/// `net.core.somaxconn`). The 128 of a plain bind overflows when a few hundred IVR channels
/// reconnect at once (a front end's restart), and every dropped SYN costs its caller a second.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind `addr` (address reuse on, as every server sets it) and listen with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_holds_a_burst_of_connects_that_are_not_accepted_yet() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        // Nobody accepts: the kernel's queue alone holds these. A plain bind's 128 would drop
        // the SYNs after it, and those connects would time out.
        let held = tokio::task::spawn_blocking(move || {
            (0..300)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.len())
        })
        .await
        .unwrap();
        assert_eq!(held.unwrap(), 300);
        drop(l);
    }
}
