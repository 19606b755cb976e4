//! `RoutesFile` → `Snapshot`: defaults filled in, names resolved, indexes built, every
//! cross-reference checked. All errors are collected, each with the key path it concerns,
//! resolved to `line:column` in the file's text.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::raw::{self, RoutesFile};
use super::value::{Checked, HumanDuration};
use crate::ids as names;
use crate::located::{Located, LocatedErrors};
use crate::pins::{OrphanPolicy, PinPolicy};
use crate::probe::ProbeSpec;
use crate::rollout::RolloutEntry;
use crate::router::split::Split;
use crate::router::{Dial, RolloutTarget, Routing, Rule, Target, UseridMatch};
use crate::snapshot::{ClusterEntry, Limits, ListenerTls, Snapshot, StoreSpec};
use crate::upstream::{Balance, ClusterSpec, EmbeddedSpec, HealthSpec, OutlierSpec, TlsSpec};

/// How the files a config names (certificates, keys, the admin token, flow files) are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// Where graygate runs (`serve`, a reload): every named file must be there.
    Here,
    /// Maybe elsewhere (`check`, `explain`, `diff` on a laptop or in CI, of a file deployed in
    /// a pod): a file that does not exist here is a note, not an error; one that exists is
    /// checked as `Here` does.
    MaybeElsewhere,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    errors: LocatedErrors,
    files: Files,
    /// Named files not found here, with [`Files::MaybeElsewhere`].
    notes: Vec<Located>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.errors
            .push(Located::at_path(self.file, self.text, path, msg));
    }

    /// The value at `path`, or `None` (and its error recorded) when it did not check.
    fn get<T: Clone>(&mut self, path: &str, v: Option<&Checked<T>>) -> Option<T> {
        match v? {
            Checked::Ok(t) => Some(t.clone()),
            Checked::Bad(msg) => {
                let e = Located::at_path(self.file, self.text, path, msg.clone());
                self.errors.push(super::refine(e, self.text));
                None
            }
        }
    }

    /// Resolve a file named in the config relative to the config's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn check_file(&mut self, path: &str, p: &str) -> PathBuf {
        let full = self.resolve(p);
        if let Err(e) = std::fs::metadata(&full) {
            self.file_error(path, &full, &e);
        }
        full
    }

    /// A named file that cannot be read: an error, or a note when it is simply not on this
    /// machine and the file may be checked away from where it runs.
    fn file_error(&mut self, path: &str, full: &Path, e: &std::io::Error) {
        if self.files == Files::MaybeElsewhere && e.kind() == std::io::ErrorKind::NotFound {
            let msg = format!(
                "`{}` is not on this machine: not checked here (graygate reads it where it runs)",
                full.display()
            );
            self.notes
                .push(Located::at_path(self.file, self.text, path, msg));
        } else {
            self.err(path, format!("cannot read `{}`: {e}", full.display()));
        }
    }
}

fn positive(
    ctx: &mut Ctx,
    path: &str,
    d: Option<&Checked<HumanDuration>>,
    default: Duration,
) -> Duration {
    let d = ctx.get(path, d).map_or(default, |d| d.0);
    if d.is_zero() {
        ctx.err(path, "must be longer than 0");
    }
    d
}

/// Compile a parsed file. `file` names it in errors; `text` is its content (for positions).
pub fn compile(
    rf: RoutesFile,
    file: &str,
    text: &str,
    config_path: &Path,
    unknown_keys: Vec<Located>,
) -> Result<Snapshot, LocatedErrors> {
    compile_with(rf, file, text, config_path, unknown_keys, Files::Here).map(|(s, _)| s)
}

/// [`compile`], with the named files checked as `files` says; also returns the notes about
/// files not found here ([`Files::MaybeElsewhere`]).
pub fn compile_with(
    rf: RoutesFile,
    file: &str,
    text: &str,
    config_path: &Path,
    unknown_keys: Vec<Located>,
    files: Files,
) -> Result<(Snapshot, Vec<Located>), LocatedErrors> {
    let base = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut ctx = Ctx {
        file,
        text,
        base: &base,
        errors: LocatedErrors(unknown_keys),
        files,
        notes: Vec::new(),
    };

    let listen = parse_addr(
        &mut ctx,
        "listen",
        rf.listen.as_deref().unwrap_or("0.0.0.0:8080"),
    );
    let admin = parse_addr(
        &mut ctx,
        "admin",
        rf.admin.as_deref().unwrap_or("127.0.0.1:9090"),
    );
    let tls = rf.tls.as_ref().map(|t| ListenerTls {
        cert: required_file(&mut ctx, "tls", "cert", t.cert.as_deref()),
        key: required_file(&mut ctx, "tls", "key", t.key.as_deref()),
        client_ca: t
            .client_ca
            .as_ref()
            .map(|c| ctx.check_file("tls.client_ca", c)),
    });
    let admin_token = rf.admin_token_file.as_ref().and_then(|f| {
        let full = ctx.resolve(f);
        match std::fs::read_to_string(&full) {
            Ok(t) if !t.trim().is_empty() => Some(Arc::from(t.trim())),
            Ok(_) => {
                ctx.err("admin_token_file", format!("`{}` is empty", full.display()));
                None
            }
            Err(e) => {
                ctx.file_error("admin_token_file", &full, &e);
                None
            }
        }
    });

    let limits = compile_limits(&mut ctx, rf.limits.as_ref());
    let (pins, store) = compile_pins(&mut ctx, rf.pins.as_ref());

    let decision_header = ctx
        .get("decision_header", rf.decision_header.as_ref())
        .unwrap_or(false);
    let listen_proxy_protocol = ctx
        .get("listen_proxy_protocol", rf.listen_proxy_protocol.as_ref())
        .unwrap_or(false);
    let engine = match ctx.get("engine", rf.engine.as_ref()) {
        Some(raw::RawEngine::Hyper) => crate::vocab::Engine::Hyper,
        _ => crate::vocab::Engine::Fast,
    };

    // Clusters, in name order (BTreeMap), indexed 0..n.
    let no_clusters = BTreeMap::new();
    let raw_clusters = rf.clusters.as_ref().unwrap_or(&no_clusters);
    if raw_clusters.is_empty() {
        ctx.err("clusters", "at least one cluster is needed");
    }
    let names_list: Vec<Arc<str>> = raw_clusters.keys().map(|k| Arc::from(k.as_str())).collect();
    let index_of = |n: &str| names_list.iter().position(|c| &**c == n);
    let mut clusters = Vec::new();
    for (name, rc) in raw_clusters {
        let spec = compile_cluster(&mut ctx, name, rc);
        clusters.push(ClusterEntry {
            name: Arc::from(name.as_str()),
            // Interned with the rules' names once the whole file has compiled.
            id: names::NameId(0),
            spec,
        });
    }
    // Fallbacks: must exist, not self, no cycles.
    let mut fallback = vec![None; clusters.len()];
    for (i, c) in clusters.iter().enumerate() {
        if let Some(fb) = &c.spec.fallback {
            let path = format!("clusters.{}.fallback", c.name);
            match index_of(fb) {
                None => ctx.err(&path, format!("unknown cluster `{fb}`")),
                Some(j) if j == i => ctx.err(&path, "a cluster cannot fall back to itself"),
                Some(j) => fallback[i] = Some(j),
            }
        }
    }
    for start in 0..clusters.len() {
        let mut seen = vec![start];
        let mut cur = start;
        while let Some(next) = fallback[cur] {
            if seen.contains(&next) {
                // Report each cycle once, at its first cluster in name order.
                if next == start && seen.iter().all(|&k| k >= start) {
                    let chain: Vec<&str> = seen.iter().map(|&k| &*clusters[k].name).collect();
                    ctx.err(
                        &format!("clusters.{}.fallback", clusters[start].name),
                        format!(
                            "fallback cycle: {} -> {}",
                            chain.join(" -> "),
                            clusters[start].name
                        ),
                    );
                }
                break;
            }
            seen.push(next);
            cur = next;
        }
    }

    // Rules.
    let mut probe = ProbeSpec::new();
    let mut rules = Vec::new();
    let mut rollouts = Vec::new();
    let mut seen_names: HashSet<&str> = HashSet::new();
    for (i, r) in rf.rules.iter().enumerate() {
        let at = |k: &str| format!("rules[{i}].{k}");
        let name = r.name.as_deref().unwrap_or("");
        if name.trim().is_empty() {
            ctx.err(&at("name"), "a rule needs a name");
        } else if name == "default" || name == "-" {
            ctx.err(
                &at("name"),
                format!(
                    "`{}` is reserved (it labels calls that no rule matched)",
                    name
                ),
            );
        } else if !seen_names.insert(name) {
            ctx.err(&at("name"), format!("duplicate rule name `{name}`"));
        }
        let target = match (&r.cluster, &r.split) {
            _ if r.rollout.is_some() => {
                rollout_target(&mut ctx, i, name, r, &index_of, &mut rollouts)
            }
            (Some(c), None) => match index_of(c) {
                Some(k) => Some(Target::Cluster(k)),
                None => {
                    ctx.err(&at("cluster"), format!("unknown cluster `{c}`"));
                    None
                }
            },
            (None, Some(split)) => {
                if split.is_empty() {
                    ctx.err(&at("split"), "a split needs at least one cluster");
                }
                let mut cands = Vec::new();
                for (c, w) in split {
                    let w = ctx.get(&format!("rules[{i}].split.{c}"), Some(w));
                    match index_of(c) {
                        Some(k) => {
                            if let Some(w) = w {
                                cands.push((k, c.as_str(), w.0))
                            }
                        }
                        None => ctx.err(
                            &format!("rules[{i}].split.{c}"),
                            format!("unknown cluster `{c}`"),
                        ),
                    }
                }
                let salt = r.salt.clone().unwrap_or_else(|| name.to_string());
                Some(Target::Split(Split::new(&salt, cands)))
            }
            (Some(_), Some(_)) => {
                ctx.err(
                    &at("split"),
                    "a rule has either `cluster` or `split`, not both",
                );
                None
            }
            (None, None) => {
                ctx.err(
                    &format!("rules[{i}]"),
                    "a rule needs `cluster`, `split` or `rollout`",
                );
                None
            }
        };
        if r.salt.is_some() && r.split.is_none() && r.rollout.is_none() {
            ctx.err(
                &at("salt"),
                "`salt` only applies to a `split` or a `rollout`",
            );
        }
        let vdn = r.vdn.as_ref().map(|v| {
            if v.is_empty() {
                ctx.err(
                    &at("vdn"),
                    "an empty vdn list never matches; remove the key instead",
                );
            }
            v.iter()
                .enumerate()
                .filter_map(|(k, s)| ctx.get(&format!("rules[{i}].vdn[{k}]"), Some(s)))
                .map(|s| (s.lo, s.hi))
                .collect()
        });
        let userid = r
            .userid
            .as_ref()
            .map(|u| compile_userid(&mut ctx, &at("userid"), u));
        let mut fields = Vec::new();
        for (p, values) in r.fields.iter().flatten() {
            if p.split('.').any(|s| s.is_empty()) {
                ctx.err(
                    &format!("rules[{i}].fields"),
                    format!("`{p}` is not a dotted path such as inparams.channelType"),
                );
                continue;
            }
            if matches!(p.as_str(), "userid" | "inaction") {
                ctx.err(
                    &format!("rules[{i}].fields"),
                    format!("use the `userid` condition, not fields.{p}"),
                );
                continue;
            }
            fields.push((probe.add_path(p), values.clone()));
        }
        let mut headers = Vec::new();
        for (h, values) in r.headers.iter().flatten() {
            match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => headers.push((name, values.clone())),
                Err(_) => ctx.err(
                    &format!("rules[{i}].headers"),
                    format!("`{h}` is not a valid header name"),
                ),
            }
        }
        if let Some(t) = target {
            rules.push(Rule {
                name: Arc::from(name),
                vdn,
                userid,
                fields,
                headers,
                target: t,
            });
        }
    }

    let default_name = rf.default.as_deref().unwrap_or("");
    let default = match index_of(default_name) {
        Some(k) => k,
        None if default_name.is_empty() => {
            ctx.err(
                "default",
                "`default` is required: the cluster for new calls that no rule matches",
            );
            0
        }
        None => {
            ctx.err("default", format!("unknown cluster `{default_name}`"));
            0
        }
    };
    if clusters.get(default).is_some_and(|c| c.spec.drain) {
        ctx.err("default", format!("the default cluster `{}` is draining; point `default` at a cluster that takes new calls", default_name));
    }

    let otlp = compile_otlp(
        &mut ctx,
        rf.tracing.as_ref().and_then(|t| t.otlp.as_deref()),
    );

    if !ctx.errors.is_empty() {
        return Err(ctx.errors.sorted());
    }
    // Only a file that compiled adds names, all at once (ids.rs: linear, bounded).
    let batch = clusters
        .iter()
        .map(|c| &*c.name)
        .chain(rules.iter().map(|r| &*r.name))
        .chain(["default"]);
    let mut ids = match names::intern_all(batch) {
        Ok(ids) => ids.into_iter(),
        Err(full) => {
            return Err(LocatedErrors(vec![Located::new(
                file,
                1,
                1,
                "",
                full.to_string(),
            )]))
        }
    };
    for c in clusters.iter_mut() {
        c.id = ids.next().unwrap_or(names::NameId(0));
    }
    let rule_ids: Vec<names::NameId> = ids.by_ref().take(rules.len()).collect();
    let default_rule_id = ids.next().unwrap_or(names::NameId(0));
    let draining = clusters.iter().map(|c| c.spec.drain).collect();
    let routing = Routing::new(rules, default, names_list, draining, fallback);
    let snap = Snapshot {
        generation: 0,
        sha256: sha256_hex(text.as_bytes()),
        loaded_at_ms: crate::clock::wall_ms(),
        path: config_path.to_path_buf(),
        listen,
        admin,
        tls,
        admin_token,
        decision_header,
        engine,
        listen_proxy_protocol,
        otlp,
        limits,
        pins,
        store,
        probe,
        routing,
        clusters,
        rule_ids,
        default_rule_id,
        rollouts,
        pools: Vec::new(),
        views: Vec::new(),
    };
    Ok((snap, ctx.notes))
}

/// The target of a rule with a `rollout:` block (checked in [`super::rollout`]): the router's
/// half (a dial at the first step, read by every new call) in the rule, the rollout's spec
/// with the same dial in `rollouts` (the rollout stage takes over the dial when the
/// generation is bound, before it is published).
fn rollout_target(
    ctx: &mut Ctx,
    i: usize,
    name: &str,
    r: &raw::RawRule,
    index_of: &dyn Fn(&str) -> Option<usize>,
    rollouts: &mut Vec<RolloutEntry>,
) -> Option<Target> {
    let raw = r.rollout.as_ref()?;
    if r.cluster.is_some() || r.split.is_some() {
        ctx.err(
            &format!("rules[{i}].rollout"),
            "a rule has one of `cluster`, `split` or `rollout`",
        );
        return None;
    }
    let at = format!("rules[{i}]");
    match super::rollout::compile(name, &at, raw, |c| index_of(c).is_some()) {
        Ok(spec) => {
            let (from, to) = (index_of(&spec.from)?, index_of(&spec.to)?);
            let salt = r.salt.clone().unwrap_or_else(|| name.to_string());
            let first = spec.steps.first().copied().unwrap_or(0);
            let dial = Arc::new(Dial::new(spec.steps.len(), first));
            let target =
                RolloutTarget::new(dial.clone(), &salt, (from, &spec.from), (to, &spec.to));
            rollouts.push(RolloutEntry {
                spec: Arc::new(spec),
                dial,
            });
            Some(Target::Rollout(Arc::new(target)))
        }
        Err(errs) => {
            for (path, msg) in errs {
                ctx.err(&path, msg);
            }
            None
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn required_file(ctx: &mut Ctx, parent: &str, key: &str, p: Option<&str>) -> PathBuf {
    match p {
        Some(p) => ctx.check_file(&format!("{parent}.{key}"), p),
        None => {
            ctx.err(parent, format!("`{key}` is required"));
            PathBuf::new()
        }
    }
}

fn parse_addr(ctx: &mut Ctx, path: &str, s: &str) -> SocketAddr {
    match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            ctx.err(
                path,
                format!("`{s}` is not an address such as 0.0.0.0:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn compile_limits(ctx: &mut Ctx, l: Option<&raw::RawLimits>) -> Limits {
    let d = Limits::default();
    let Some(l) = l else { return d };
    let max_body = ctx
        .get("limits.max_body", l.max_body.as_ref())
        .map_or(d.max_body, |b| b.0);
    if max_body == 0 {
        ctx.err("limits.max_body", "must be more than 0 bytes");
    }
    let max_connections = ctx
        .get("limits.max_connections", l.max_connections.as_ref())
        .or(d.max_connections);
    if max_connections == Some(0) {
        ctx.err("limits.max_connections", "must be at least 1");
    }
    Limits {
        max_body,
        header_read_timeout: positive(
            ctx,
            "limits.header_read_timeout",
            l.header_read_timeout.as_ref(),
            d.header_read_timeout,
        ),
        request_timeout: positive(
            ctx,
            "limits.request_timeout",
            l.request_timeout.as_ref(),
            d.request_timeout,
        ),
        max_connections,
        max_connections_per_ip: ctx
            .get(
                "limits.max_connections_per_ip",
                l.max_connections_per_ip.as_ref(),
            )
            .unwrap_or(d.max_connections_per_ip),
        idle_timeout: positive(
            ctx,
            "limits.idle_timeout",
            l.idle_timeout.as_ref(),
            d.idle_timeout,
        ),
        max_connection_age: ctx
            .get("limits.max_connection_age", l.max_connection_age.as_ref())
            .map_or(d.max_connection_age, |x| x.0),
        send_timeout: positive(
            ctx,
            "limits.send_timeout",
            l.send_timeout.as_ref(),
            d.send_timeout,
        ),
        max_other_body: match ctx
            .get("limits.max_other_body", l.max_other_body.as_ref())
            .map(|b| b.0)
        {
            Some(0) => {
                ctx.err("limits.max_other_body", "must be more than 0 bytes");
                d.max_other_body
            }
            Some(n) => n,
            None => d.max_other_body,
        },
    }
}

/// `tracing.otlp`: an `http://host:port` collector (OTLP/HTTP posts to `/v1/traces`).
fn compile_otlp(ctx: &mut Ctx, url: Option<&str>) -> Option<http::Uri> {
    let url = url?;
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(u),
        Ok(_) => {
            ctx.err(
                "tracing.otlp",
                format!("`{url}`: use an http://host:port URL of an OTLP/HTTP collector"),
            );
            None
        }
        Err(e) => {
            ctx.err("tracing.otlp", format!("`{url}`: {e}"));
            None
        }
    }
}

fn compile_pins(ctx: &mut Ctx, p: Option<&raw::RawPins>) -> (PinPolicy, StoreSpec) {
    let d = PinPolicy::default();
    let Some(p) = p else {
        return (d, StoreSpec::Memory { snapshot: None });
    };
    let policy = PinPolicy {
        idle_ttl: positive(ctx, "pins.idle_ttl", p.idle_ttl.as_ref(), d.idle_ttl),
        end_grace: positive(ctx, "pins.end_grace", p.end_grace.as_ref(), d.end_grace),
        orphan_turns: match ctx.get("pins.orphan_turns", p.orphan_turns.as_ref()) {
            Some(raw::RawOrphanTurns::Reject) => OrphanPolicy::Reject,
            _ => OrphanPolicy::Route,
        },
        max_pins: match ctx.get("pins.max_pins", p.max_pins.as_ref()) {
            Some(0) => {
                ctx.err("pins.max_pins", "must be at least 1");
                d.max_pins
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => d.max_pins,
        },
    };
    let store = match p.store.as_deref().unwrap_or("memory") {
        "memory" => StoreSpec::Memory {
            snapshot: p.snapshot.as_ref().map(|s| ctx.resolve(s)),
        },
        url if url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with(crate::pins::redis::SENTINEL_SCHEME) =>
        {
            if let Some(Err(e)) = url
                .starts_with(crate::pins::redis::SENTINEL_SCHEME)
                .then(|| crate::pins::redis::parse_sentinel_url(url))
            {
                ctx.err(
                    "pins.store",
                    format!("`{}`: {e}", crate::pins::redis::masked_url(url)),
                );
            }
            if p.snapshot.is_some() {
                ctx.err("pins.snapshot", "`snapshot` applies to the memory store only (with Redis, pins survive restarts)");
            }
            let r = p.redis.as_ref();
            StoreSpec::Redis {
                url: url.to_string(),
                key_prefix: r
                    .and_then(|r| r.key_prefix.clone())
                    .unwrap_or_else(|| "graygate:".into()),
                timeout: positive(
                    ctx,
                    "pins.redis.timeout",
                    r.and_then(|r| r.timeout.as_ref()),
                    Duration::from_millis(50),
                ),
            }
        }
        other => {
            ctx.err(
                "pins.store",
                format!("`{other}`: use `memory`, a redis://host:port/db URL or redis+sentinel://host:port,host:port/MASTER_NAME/DB"),
            );
            StoreSpec::Memory { snapshot: None }
        }
    };
    (policy, store)
}

fn compile_cluster(ctx: &mut Ctx, name: &str, rc: &raw::RawCluster) -> ClusterSpec {
    let at = |k: &str| format!("clusters.{name}.{k}");
    if name.is_empty() || name == "-" || name.contains(char::is_whitespace) {
        ctx.err(
            &format!("clusters.{name}"),
            format!("`{name}` is not a usable cluster name"),
        );
    }
    let embedded = rc.embedded.as_ref().map(|e| {
        let instances = ctx
            .get(&at("embedded.instances"), e.instances.as_ref())
            .unwrap_or(1);
        if !(1..=64).contains(&instances) {
            ctx.err(
                &at("embedded.instances"),
                "instances must be between 1 and 64",
            );
        }
        EmbeddedSpec {
            label: e.label.clone().unwrap_or_else(|| name.to_string()),
            flows: e.flows.as_ref().map(|f| {
                ctx.check_file(&at("embedded.flows"), f)
                    .display()
                    .to_string()
            }),
            instances,
        }
    });
    let endpoints: Vec<_> = rc
        .endpoints
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(k, e)| ctx.get(&format!("clusters.{name}.endpoints[{k}]"), Some(e)))
        .collect();
    match (&rc.endpoints, &embedded) {
        (Some(_), Some(_)) => ctx.err(
            &at("embedded"),
            "a cluster has either `endpoints` or `embedded`, not both",
        ),
        (None, None) => ctx.err(
            &format!("clusters.{name}"),
            "a cluster needs `endpoints` or `embedded`",
        ),
        (Some(e), None) if e.is_empty() => {
            ctx.err(&at("endpoints"), "at least one endpoint is needed")
        }
        (Some(e), None) if e.len() > 64 => {
            ctx.err(&at("endpoints"), "at most 64 endpoints per cluster")
        }
        _ => {}
    }
    let mut seen = HashSet::new();
    for (k, e) in endpoints.iter().enumerate() {
        if !seen.insert(e.text.clone()) {
            ctx.err(
                &format!("clusters.{name}.endpoints[{k}]"),
                format!("duplicate endpoint `{}`", e.text),
            );
        }
    }
    let health = rc.health.as_ref().map(|h| {
        let unhealthy_after = ctx
            .get(&at("health.unhealthy_after"), h.unhealthy_after.as_ref())
            .unwrap_or(3);
        let healthy_after = ctx
            .get(&at("health.healthy_after"), h.healthy_after.as_ref())
            .unwrap_or(2);
        if unhealthy_after == 0 {
            ctx.err(&at("health.unhealthy_after"), "must be at least 1");
        }
        if healthy_after == 0 {
            ctx.err(&at("health.healthy_after"), "must be at least 1");
        }
        if let Some(p) = &h.path {
            if !p.starts_with('/') {
                ctx.err(&at("health.path"), format!("`{p}` must start with /"));
            }
        }
        HealthSpec {
            interval: positive(
                ctx,
                &at("health.interval"),
                h.interval.as_ref(),
                Duration::from_secs(2),
            ),
            timeout: positive(
                ctx,
                &at("health.timeout"),
                h.timeout.as_ref(),
                Duration::from_secs(1),
            ),
            path: h.path.clone(),
            unhealthy_after,
            healthy_after,
        }
    });
    let od = OutlierSpec::default();
    let outlier = match &rc.outlier {
        None => od,
        Some(o) => OutlierSpec {
            consecutive_failures: ctx
                .get(
                    &at("outlier.consecutive_failures"),
                    o.consecutive_failures.as_ref(),
                )
                .unwrap_or(od.consecutive_failures),
            eject_for: positive(
                ctx,
                &at("outlier.eject_for"),
                o.eject_for.as_ref(),
                od.eject_for,
            ),
            max_ejected: ctx
                .get(&at("outlier.max_ejected"), o.max_ejected.as_ref())
                .map_or(od.max_ejected, |p| p.0),
        },
    };
    let tls = match &rc.tls {
        None => TlsSpec::default(),
        Some(t) => {
            if t.cert.is_some() != t.key.is_some() {
                ctx.err(&at("tls"), "`cert` and `key` go together");
            }
            TlsSpec {
                ca: t
                    .ca
                    .as_ref()
                    .map(|c| ctx.check_file(&at("tls.ca"), c).display().to_string()),
                cert: t
                    .cert
                    .as_ref()
                    .map(|c| ctx.check_file(&at("tls.cert"), c).display().to_string()),
                key: t
                    .key
                    .as_ref()
                    .map(|c| ctx.check_file(&at("tls.key"), c).display().to_string()),
                server_name: t.server_name.clone(),
            }
        }
    };
    ClusterSpec {
        endpoints,
        embedded,
        balance: match ctx.get(&at("balance"), rc.balance.as_ref()) {
            Some(raw::RawBalance::LeastRequest) => Balance::LeastRequest,
            Some(raw::RawBalance::UseridHash) => Balance::UseridHash,
            _ => Balance::RoundRobin,
        },
        timeout: positive(
            ctx,
            &at("timeout"),
            rc.timeout.as_ref(),
            Duration::from_secs(10),
        ),
        connect_timeout: positive(
            ctx,
            &at("connect_timeout"),
            rc.connect_timeout.as_ref(),
            Duration::from_secs(1),
        ),
        max_inflight: ctx
            .get(&at("max_inflight"), rc.max_inflight.as_ref())
            .unwrap_or(0),
        health,
        outlier,
        fallback: rc.fallback.clone(),
        tls,
        drain: ctx.get(&at("drain"), rc.drain.as_ref()).unwrap_or(false),
    }
}

fn compile_userid(ctx: &mut Ctx, path: &str, u: &raw::RawUseridMatch) -> UseridMatch {
    if u.exact.is_empty() && u.prefix.is_empty() && u.suffix.is_empty() && u.regex.is_none() {
        ctx.err(
            path,
            "a userid condition needs at least one of exact, prefix, suffix, regex",
        );
    }
    for (k, list) in [("prefix", &u.prefix), ("suffix", &u.suffix)] {
        if list.iter().any(String::is_empty) {
            ctx.err(
                &format!("{path}.{k}"),
                "an empty string matches every userid; remove it",
            );
        }
    }
    UseridMatch {
        exact: u.exact.iter().map(|s| Box::from(s.as_str())).collect(),
        prefix: u.prefix.clone(),
        suffix: u.suffix.clone(),
        regex: ctx
            .get(&format!("{path}.regex"), u.regex.as_ref())
            .map(|r| r.0),
    }
}

/// For `graygate check`: a one-paragraph summary.
pub fn summary(s: &Snapshot) -> String {
    let mut by_state: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &s.clusters {
        by_state
            .entry(if c.spec.drain { "draining" } else { "active" })
            .or_default()
            .push(&c.name);
    }
    let clusters: Vec<String> = s
        .clusters
        .iter()
        .map(|c| {
            let what = match &c.spec.embedded {
                Some(e) => format!("embedded x{}", e.instances),
                None => format!("{} endpoint(s)", c.spec.endpoints.len()),
            };
            format!(
                "{} ({what}{})",
                c.name,
                if c.spec.drain { ", draining" } else { "" }
            )
        })
        .collect();
    format!(
        "{} cluster(s): {}\n{} rule(s): {}\ndefault: {}",
        s.clusters.len(),
        clusters.join(", "),
        s.routing.rules.len(),
        s.routing
            .rules
            .iter()
            .map(|r| &*r.name)
            .collect::<Vec<_>>()
            .join(", "),
        s.routing.cluster_name(s.routing.default)
    )
}
