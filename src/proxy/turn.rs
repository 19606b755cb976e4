//! One turn as a fixed sequence of phases over one [`TurnCtx`].
//!
//! ```text
//! begin ─► probe ─► locate ─► forward ─► (engine reads the answer) ─► settle_pin ─► record
//!                     │            └─ (the gateway answers itself) ─► fail ─► settle_failure ─┘
//!                     └─ (a request that is no turn)                    (always, success or not)
//! ```
//!
//! Call outcomes (spec §11) ride the same phases: `settle_pin` leaves what the answer tells
//! about the call (a failure, a transfer) on its pin, or — for a new call that ends at that
//! turn without a pin — the outcome in the record; `settle_failure` does the same for the
//! gateway's own 5xx; `record` counts a pinless call's outcome and, for a rollout's call, the
//! turn's time. A pinned call's outcome is settled by the pin store when the pin goes.
//!
//! Each phase is a method with a doc comment saying when it runs and what it leaves in the
//! context. The engines (hyper's general one and the dialog fast path) differ only in how
//! bytes move: how the body is read, how one request is written to one endpoint (an
//! [`Attempt`]), how the answer is read back. Everything that decides something — the pin, the
//! rules and the fallback ([`crate::router::choose`]), the endpoint, retries, what the answer
//! does to the pin, the metrics and the access line — is here, once, for both.

use std::future::Future;
use std::sync::Arc;

use compact_str::CompactString;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::{Peer, Proxy};
use crate::ids::NameId;
use crate::pins::lifecycle::{on_answer, outcome, Facts, Gone, PinAction};
use crate::pins::{OrphanPolicy, Pin, PinStore, ReleaseReason};
use crate::probe::{self, Dialog, Turn};
use crate::record::TurnRecord;
use crate::respond::{decision_header, AnswerPeek, GatewayError};
use crate::router::choose;
use crate::snapshot::Snapshot;
use crate::upstream::pool::PoolState;
use crate::upstream::{ClusterPool, Endpoint, PickError, UpstreamError};
use crate::vocab::{CallOutcome, PinKind};

/// The context of one turn: the generation it was started on (loaded once, used to its end),
/// the record it fills, and what each phase leaves for the next.
pub struct TurnCtx<'p> {
    proxy: &'p Proxy,
    /// The config generation of this turn, loaded once by [`TurnCtx::begin`].
    pub gen: Arc<Snapshot>,
    pub peer: Peer,
    /// When the request's head had arrived.
    pub start: Instant,
    /// The one deadline the turn is under at each moment: until [`TurnCtx::forward`] it is
    /// `start + request_timeout` (reading the client's body); from `forward` on it is the
    /// cluster's `timeout`, started once when the request goes to the cluster and covering the
    /// answer to its last byte.
    pub deadline: Instant,
    /// What the turn learned; read once, by [`TurnCtx::record`].
    pub rec: TurnRecord,
    /// Left by [`TurnCtx::probe`].
    pub turn: Option<Turn>,
    /// Left by [`TurnCtx::locate`].
    pub route: Option<Route>,
    /// [`TurnCtx::record`] ran.
    recorded: bool,
}

/// Where [`TurnCtx::locate`] sends the turn.
pub struct Route {
    pub pool: Arc<ClusterPool>,
    /// The cluster's settings, endpoints and client in the turn's generation: a reload while
    /// the turn is open does not change its timeout or endpoints.
    pub view: Arc<PoolState>,
    pub kind: PinKind,
    /// The rule to pin with (the pin's own rule for a kept pin).
    pub rule_id: NameId,
    /// Healthy endpoints only (new calls and routed orphans); a pinned turn also tries marked
    /// down endpoints of its cluster (§10).
    pub strict: bool,
    /// The fallback cluster's index, when the rules' cluster has one and it has not been used:
    /// where the call goes if no endpoint of its cluster can be reached.
    pub spare: Option<usize>,
    /// The pin a kept call followed (what its earlier turns left on it, spec §11).
    pub pin: Option<Pin>,
}

/// Cluster `c`'s view in `gen` (the pool's current state for a snapshot made without views,
/// as `check` and the benches make them).
fn view_of(gen: &Snapshot, c: usize, pool: &ClusterPool) -> Arc<PoolState> {
    gen.view(c)
        .cloned()
        .unwrap_or_else(|| pool.state.load_full())
}

/// Why a request could not be forwarded, and whether it is certain that no endpoint saw it
/// (then a new call may still go to its cluster's fallback).
pub struct Failed {
    pub error: GatewayError,
    /// Every endpoint tried was unreachable (or none was up): the request left nothing behind.
    pub unreachable: bool,
}

/// One engine's way of sending the turn's request to one endpoint. The phase around it picks
/// the endpoint, counts it in flight, classifies the outcome, marks the endpoint's health, and
/// tries another endpoint only when this one was never reached and [`Attempt::can_resend`].
pub trait Attempt: Send {
    type Answer: Send;
    /// Send the request to `endpoint` and wait for the answer's head, by `deadline`.
    fn send(
        &mut self,
        endpoint: &Arc<Endpoint>,
        state: &PoolState,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send;
    /// The answer's HTTP status.
    fn status(answer: &Self::Answer) -> u16;
    /// The request can be sent again (its body is still at hand).
    fn can_resend(&self) -> bool;
}

impl<'p> TurnCtx<'p> {
    /// Runs first, when a request's head has arrived. Loads the generation (once for the
    /// whole turn) and leaves the request id, method and path in the record.
    pub fn begin(
        proxy: &'p Proxy,
        peer: Peer,
        method: http::Method,
        path: &str,
        request_id: Option<&str>,
    ) -> Self {
        let start = Instant::now();
        let gen = proxy.live.load_full();
        let deadline = start + gen.limits.request_timeout;
        let rec = TurnRecord {
            request_id: proxy.request_id(request_id),
            method,
            path: CompactString::from(path),
            client: Some(peer.addr.ip()),
            ..TurnRecord::default()
        };
        TurnCtx {
            proxy,
            gen,
            peer,
            start,
            deadline,
            rec,
            turn: None,
            route: None,
            recorded: false,
        }
    }

    /// Runs with `begin`, on the request's headers: the turn's place in a trace (spec §13),
    /// continued from a valid `traceparent` or new.
    pub fn trace_from(&mut self, headers: &http::HeaderMap) {
        self.rec.trace = Some(crate::trace::TraceContext::from_headers(
            headers,
            self.proxy.spans.is_some(),
        ));
    }

    /// [`TurnCtx::trace_from`] for an engine that reads header lines itself: the value of the
    /// request's only `traceparent` (`None` for none or several).
    pub fn trace_from_traceparent(&mut self, traceparent: Option<&[u8]>) {
        self.rec.trace = Some(crate::trace::TraceContext::from_traceparent(
            traceparent,
            self.proxy.spans.is_some(),
        ));
    }

    /// Runs on a dialog turn once its whole body is at hand. Leaves the probed [`Turn`] and,
    /// in the record, the vdn, the userid and the inaction (the userid also when the body is
    /// refused, if one could be read, for the error answer).
    pub fn probe(&mut self, dialog: Dialog, body: &[u8]) -> Result<(), GatewayError> {
        self.rec.vdn = dialog.vdn();
        match probe::scan(body, dialog, &self.gen.probe) {
            Ok(t) => {
                self.rec.userid = Some(t.userid.clone());
                self.rec.inaction = Some(t.inaction);
                self.turn = Some(t);
                Ok(())
            }
            Err(e) => {
                self.rec.userid = probe::scan::userid_hint(body);
                Err(e.into())
            }
        }
    }

    /// Runs after [`TurnCtx::probe`]. A pinned call follows its pin, whatever the rules say
    /// now; a new call (or a routed orphan turn) gets [`choose`] over this generation's rules
    /// and the live health of its clusters. Leaves the [`Route`] and, in the record, the rule,
    /// the cluster, the pin kind and the fallback when it applied.
    pub async fn locate(&mut self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let Some(turn) = &self.turn else {
            return Err(GatewayError::BadJson("the body was not probed".into()));
        };
        let gen = &self.gen;
        if let Some(p) = self.proxy.pins.get(&turn.userid, gen.pins.idle_ttl).await {
            self.rec.rule = Some(crate::ids::name(p.rule));
            self.rec.rule_id = Some(p.rule);
            self.rec.cluster = Some(crate::ids::name(p.cluster));
            self.rec.cluster_id = Some(p.cluster);
            let Some(pool) = self.proxy.upstreams.get(p.cluster) else {
                return Err(GatewayError::NoUpstream(format!(
                    "the call is pinned to cluster `{}`, which this gateway does not know",
                    crate::ids::name(p.cluster)
                )));
            };
            self.rec.pin = Some(PinKind::Kept.as_str());
            // A cluster of this generation: its view here; a retired one: its pool's state,
            // which no longer changes.
            let view = gen
                .cluster_index_of(p.cluster)
                .and_then(|c| gen.view(c).cloned())
                .unwrap_or_else(|| pool.state.load_full());
            self.rec.epoch = p.epoch;
            self.route = Some(Route {
                pool,
                view,
                kind: PinKind::Kept,
                rule_id: p.rule,
                strict: false,
                spare: None,
                pin: Some(p),
            });
            return Ok(());
        }
        let kind = if turn.inaction.starts_call() {
            PinKind::New
        } else {
            match gen.pins.orphan_turns {
                OrphanPolicy::Reject => return Err(GatewayError::OrphanTurn),
                OrphanPolicy::Route => PinKind::Orphan,
            }
        };
        self.rec.pin = Some(kind.as_str());
        let choice = choose(turn, headers, &gen.routing, |c| {
            gen.pools.get(c).is_none_or(|p| p.any_healthy())
        });
        let pool = gen
            .pools
            .get(choice.cluster)
            .cloned()
            .ok_or_else(|| GatewayError::NoUpstream("cluster has no pool".into()))?;
        if choice.fell_back() {
            self.rec.fallback_from = gen.routing.clusters.get(choice.picked).cloned();
        }
        let rule_id = gen.rule_id(choice.rule);
        self.rec.rule = Some(gen.routing.rule_arc(choice.rule));
        self.rec.rule_id = Some(rule_id);
        self.rec.cluster = Some(pool.name.clone());
        self.rec.cluster_id = Some(pool.id);
        let view = view_of(gen, choice.cluster, &pool);
        // A rollout rule chose: the call starts in the rollout's epoch, at the step's share.
        self.rec.step_bp = choice.step.map(|p| p.share_bp);
        self.rec.epoch = choice.step.map_or(0, |p| p.epoch);
        self.route = Some(Route {
            pool,
            view,
            kind,
            rule_id,
            strict: true,
            spare: if choice.fell_back() {
                None
            } else {
                choice.fallback
            },
            pin: None,
        });
        Ok(())
    }

    /// Runs for a request that is no dialog turn: it goes, unchanged, to the default cluster
    /// (no pin, no rule). Leaves the [`Route`] and the cluster in the record.
    pub fn locate_other(&mut self) -> Result<(), GatewayError> {
        let pool = self
            .gen
            .pools
            .get(self.gen.routing.default)
            .cloned()
            .ok_or_else(|| GatewayError::NoUpstream("no pool for the default cluster".into()))?;
        self.rec.cluster = Some(pool.name.clone());
        self.rec.cluster_id = Some(pool.id);
        let view = view_of(&self.gen, self.gen.routing.default, &pool);
        self.route = Some(Route {
            pool,
            view,
            kind: PinKind::New,
            rule_id: self.gen.default_rule_id,
            strict: false,
            spare: None,
            pin: None,
        });
        Ok(())
    }

    /// Runs after [`TurnCtx::locate`]: sends the request with the engine's `attempt` to an
    /// endpoint of the route's cluster, starting the cluster's `timeout` (the turn's
    /// [`deadline`](TurnCtx::deadline) from here on). A new call that no endpoint of its
    /// cluster could take, the request untouched, goes to the cluster's fallback (once; the
    /// fallback's own failure is the answer); a pinned turn never moves. Leaves the answer's
    /// head with the engine and, in the record, the endpoint and the upstream time.
    pub async fn forward<A: Attempt>(
        &mut self,
        attempt: &mut A,
    ) -> Result<A::Answer, GatewayError> {
        let Some(route) = &self.route else {
            return Err(GatewayError::NoUpstream("the turn was not located".into()));
        };
        let pool = route.pool.clone();
        let state = route.view.clone();
        let (strict, spare, kind) = (route.strict, route.spare, route.kind);
        let userid = self
            .turn
            .as_ref()
            .map(|t| t.userid.clone())
            .unwrap_or_default();
        match self.send_to(&pool, &state, attempt, &userid, strict).await {
            Ok(a) => Ok(a),
            Err(f) if f.unreachable && spare.is_some() => {
                let Some((c, fb)) = spare.and_then(|c| Some((c, self.gen.pools.get(c)?))) else {
                    return Err(f.error);
                };
                let fb = fb.clone();
                let state = view_of(&self.gen, c, &fb);
                tracing::warn!(from = %pool.name, to = %fb.name, "no endpoint could be reached for a new call; sending it to the fallback cluster");
                self.rec.fallback_from = Some(pool.name.clone());
                self.rec.cluster = Some(fb.name.clone());
                self.rec.cluster_id = Some(fb.id);
                if let Some(r) = &mut self.route {
                    r.pool = fb.clone();
                    r.view = state.clone();
                    r.spare = None;
                }
                // A cluster of its own, with a timeout of its own.
                self.send_to(&fb, &state, attempt, &userid, strict)
                    .await
                    .map_err(|f| f.error)
            }
            // A pinned turn that reached no endpoint of its cluster: one answer, 503, whether
            // the endpoints are already marked down or not yet (spec §10).
            Err(f) if f.unreachable && kind == PinKind::Kept => Err(match f.error {
                GatewayError::NoUpstream(m) => GatewayError::NoUpstream(m),
                other => GatewayError::NoUpstream(format!(
                    "no endpoint of cluster `{}` could be reached for this pinned call ({})",
                    pool.name,
                    other.message()
                )),
            }),
            Err(f) => Err(f.error),
        }
    }

    /// One cluster's try for [`TurnCtx::forward`], on its view in the turn's generation, with
    /// the cluster's `timeout` started as the turn's deadline.
    async fn send_to<A: Attempt>(
        &mut self,
        pool: &ClusterPool,
        state: &PoolState,
        attempt: &mut A,
        userid: &str,
        strict: bool,
    ) -> Result<A::Answer, Failed> {
        self.deadline = Instant::now() + state.spec.timeout;
        send_on(
            pool,
            state,
            attempt,
            userid,
            strict,
            &mut self.rec,
            self.deadline,
        )
        .await
    }

    /// Runs when the engine has the answer's status and, for a 2xx it could read whole, its
    /// `ret` and `outaction`. Creates, ends or releases the pin as [`on_answer`] says; what the
    /// answer tells about the call ([`Facts`]: a failure, a transfer) goes onto the pin first,
    /// so a hangup that releases it settles the call with it (spec §11). Leaves the outaction
    /// and `ret` in the record, and the outcome when a new call ended here without a pin.
    pub async fn settle_pin(&mut self, status: u16, answer: AnswerPeek) {
        let outaction = answer.outaction;
        self.rec.outaction = outaction;
        self.rec.ret = answer.ret;
        let (Some(turn), Some(route)) = (&self.turn, &self.route) else {
            return;
        };
        let gen = &self.gen;
        let facts = Facts::of(status, answer.ret, outaction);
        if let Some(p) = &route.pin {
            if facts.adds_to(p) {
                self.proxy.pins.note(&turn.userid, facts).await;
            }
        }
        match on_answer(route.kind, status, turn.hangup, outaction) {
            PinAction::Nothing => {
                // A new call that is not pinned ends with this turn when it failed, or when
                // its only turn already ended it (outaction 10 answering a hangup report).
                let ended = outaction.is_some_and(crate::protocol::Outaction::is_end);
                if route.kind != PinKind::Kept && (facts.failed || (ended && status < 300)) {
                    self.rec.ended_unpinned = Some(outcome(
                        facts.failed,
                        facts.transferred,
                        ended,
                        Gone::Released(ReleaseReason::Hangup),
                    ));
                }
            }
            PinAction::Create { ending } => {
                let new = Pin {
                    cluster: route.pool.id,
                    rule: route.rule_id,
                    generation: gen.generation,
                    created_at_ms: crate::clock::wall_ms(),
                    ending,
                    epoch: self.rec.epoch,
                    failed: facts.failed,
                    transferred: facts.transferred,
                };
                let ttl = if ending {
                    gen.pins.end_grace
                } else {
                    gen.pins.idle_ttl
                };
                let kept = self.proxy.pins.create(&turn.userid, new, ttl).await;
                self.rec.created_pin = kept == new;
                if kept.cluster != route.pool.id {
                    tracing::warn!(userid = %crate::protocol::Masked(&turn.userid), first = %crate::ids::name(kept.cluster), "another turn pinned this call first; later turns follow that pin");
                }
            }
            PinAction::End => self.proxy.pins.end(&turn.userid, gen.pins.end_grace).await,
            PinAction::ReleaseHangup => {
                self.proxy
                    .pins
                    .release(&turn.userid, ReleaseReason::Hangup)
                    .await;
            }
        }
    }

    /// The located cluster, or the fallback it may still go to, has an `https://` endpoint
    /// (which only the general client can reach).
    pub fn route_has_https(&self) -> bool {
        let Some(route) = &self.route else {
            return false;
        };
        let https = |v: &PoolState| v.endpoints.iter().any(|e| e.https);
        https(&route.view)
            || route
                .spare
                .and_then(|c| Some(view_of(&self.gen, c, self.gen.pools.get(c)?)))
                .is_some_and(|fb| https(&fb))
    }

    /// The `x-graygate-route` value for this turn, when `decision_header: true` and the turn
    /// was located (also on the gateway's own answer to a located turn: it still says where
    /// the turn went).
    pub fn decision_header(&self) -> Option<HeaderValue> {
        if !self.gen.decision_header {
            return None;
        }
        let (Some(pin), Some(cluster)) = (self.rec.pin, self.rec.cluster.as_deref()) else {
            return None;
        };
        let step = self.rec.step_bp.map(|bp| {
            crate::router::Pick {
                epoch: self.rec.epoch,
                share_bp: bp,
            }
            .share_text()
        });
        decision_header(
            self.rec.rule.as_deref().unwrap_or("-"),
            cluster,
            pin,
            self.gen.generation,
            self.rec.fallback_from.as_deref(),
            step.as_deref(),
        )
    }

    /// Runs when any phase failed: the gateway answers itself. Leaves the errorCode in the
    /// record and returns the error for the engine to write.
    pub fn fail(&mut self, e: GatewayError) -> GatewayError {
        let (status, code) = e.row();
        self.rec.error_code = Some(code);
        self.rec.status = status.as_u16();
        e
    }

    /// Runs after [`TurnCtx::fail`] on a located dialog turn: the gateway's own 5xx is a
    /// failure of the call (spec §11). A pinned call carries it on its pin (settled when the
    /// pin goes); a new call, never pinned, ends here as `failed` (counted by `record`).
    pub async fn settle_failure(&mut self) {
        if self.rec.status < 500 || self.rec.error_code.is_none() {
            return;
        }
        let (Some(turn), Some(route)) = (&self.turn, &self.route) else {
            return;
        };
        match &route.pin {
            Some(p) => {
                let facts = Facts {
                    failed: true,
                    transferred: false,
                };
                if facts.adds_to(p) {
                    self.proxy.pins.note(&turn.userid, facts).await;
                }
            }
            None => self.rec.ended_unpinned = Some(CallOutcome::Failed),
        }
    }

    /// Runs last, on every request, success or not, when the answer's head has been handed to
    /// the client. Every turn metric, the access line, the outcome of a call that ended here
    /// without a pin and a rollout's turn time are derived from the record here, and nowhere
    /// else.
    pub fn record(&mut self, status: u16) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.rec.status = status;
        self.rec.total = self.start.elapsed();
        if let (Some(rule), Some(cluster)) = (self.rec.rule_id, self.rec.cluster_id) {
            let outcomes = &self.proxy.outcomes;
            if let Some(o) = self.rec.ended_unpinned {
                outcomes.settle(cluster, rule, self.rec.epoch, o);
            }
            if self.rec.epoch != 0 {
                outcomes
                    .rollouts()
                    .observe_turn(rule, cluster, self.rec.epoch, self.rec.total);
            }
        }
        self.proxy.metrics.observe(&self.rec);
        if let (Some(spans), Some(ctx)) = (&self.proxy.spans, self.rec.trace) {
            spans.record(span_of(&self.rec, ctx));
        }
        crate::telemetry::access_log(&self.rec);
    }
}

/// Send to one endpoint of `pool` through `attempt`. `strict`: healthy endpoints only.
async fn send_on<A: Attempt>(
    pool: &ClusterPool,
    state: &PoolState,
    attempt: &mut A,
    userid: &str,
    strict: bool,
    rec: &mut TurnRecord,
    deadline: Instant,
) -> Result<A::Answer, Failed> {
    let mut tried: u64 = 0;
    let mut last_err: Option<UpstreamError> = None;
    let upstream_start = Instant::now();
    // A pinned turn whose cluster is all marked down still tries its endpoints (§10); if none
    // of them can be reached either, the answer is 503 GW.NO_UPSTREAM.
    let all_marked_down = !strict && !pool.any_healthy();
    loop {
        let (i, guard) = match pool.pick(state, userid, tried, strict) {
            Ok(x) => x,
            Err(why) => {
                // Out of endpoints to try: report the last real error if there was one. Only
                // unreached endpoints are tried again, so `last_err` says for all of them.
                let unreachable = match &last_err {
                    Some(e) => !e.reached_endpoint(),
                    None => why == PickError::NoneHealthy,
                };
                let error = match last_err {
                    Some(e) if all_marked_down && !e.reached_endpoint() => {
                        GatewayError::NoUpstream(format!(
                            "cluster `{}` has no healthy endpoint and none could be reached ({e})",
                            pool.name
                        ))
                    }
                    Some(e) => to_gateway(e),
                    None => GatewayError::NoUpstream(match why {
                        PickError::Full => format!(
                            "every endpoint of cluster `{}` is at max_inflight",
                            pool.name
                        ),
                        PickError::NoneHealthy => {
                            format!("cluster `{}` has no healthy endpoint", pool.name)
                        }
                    }),
                };
                return Err(Failed { error, unreachable });
            }
        };
        if i < 64 {
            tried |= 1 << i;
        }
        let endpoint = guard.endpoint().clone();
        rec.endpoint = Some(endpoint.url.clone());
        let result = attempt.send(&endpoint, state, deadline).await;
        rec.upstream = Some(upstream_start.elapsed());
        let err = match result {
            Ok(answer) => {
                if matches!(A::status(&answer), 502..=504) {
                    pool.record_failure(state, &endpoint, "answered 502/503/504");
                } else {
                    pool.record_success(&endpoint);
                }
                drop(guard);
                return Ok(answer);
            }
            Err(e) => e,
        };
        drop(guard);
        if err.is_local() {
            // Our own shortage (EMFILE and friends): not the endpoint's fault, so no health or
            // outlier count, no retry elsewhere (it would fail the same way) and no fallback.
            tracing::warn!(cluster = %pool.name, endpoint = %endpoint.url, error = %err, "local resources exhausted: request not sent");
            return Err(Failed {
                error: to_gateway(err),
                unreachable: false,
            });
        }
        pool.record_failure(state, &endpoint, &err.to_string());
        tracing::warn!(cluster = %pool.name, endpoint = %endpoint.url, error = %err, "upstream request failed");
        let resend = attempt.can_resend();
        if err.reached_endpoint() || !resend || Instant::now() >= deadline {
            // A streamed body cannot be sent again anywhere: only a body at hand counts as
            // left behind intact.
            let unreachable = !err.reached_endpoint() && resend;
            return Err(Failed {
                error: to_gateway(err),
                unreachable,
            });
        }
        last_err = Some(err);
    }
}

/// An upstream failure as the gateway's answer (§3).
pub fn to_gateway(e: UpstreamError) -> GatewayError {
    match e {
        UpstreamError::Timeout { .. } => GatewayError::UpstreamTimeout(e.to_string()),
        UpstreamError::NoUpstream { .. } => GatewayError::NoUpstream(e.to_string()),
        UpstreamError::Connect { .. } | UpstreamError::Broken { .. } => {
            GatewayError::Upstream(e.to_string())
        }
        UpstreamError::Local { .. } => GatewayError::LocalResources(e.to_string()),
    }
}

/// The exported span of a finished turn (`rec.total` is its duration, ending now); no userid.
fn span_of(rec: &TurnRecord, ctx: crate::trace::TraceContext) -> crate::trace::otlp::SpanRecord {
    let (start_unix_ns, end_unix_ns) = crate::trace::otlp::ending_now(rec.total);
    crate::trace::otlp::SpanRecord {
        ctx,
        start_unix_ns,
        end_unix_ns,
        method: rec.method.clone(),
        path: rec.path.clone(),
        vdn: rec.vdn,
        rule: rec.rule.clone(),
        cluster: rec.cluster.clone(),
        endpoint: rec.endpoint.clone(),
        pin: rec.pin,
        inaction: rec.inaction.map(|i| i.0),
        outaction: rec.outaction.map(|o| o.0),
        status: rec.status,
        error_code: rec.error_code,
    }
}
