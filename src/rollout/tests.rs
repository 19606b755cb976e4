//! The registry: routing at a share, state across reloads, counting by epoch, persistence.

use std::path::Path;

use super::*;
use crate::ids as names;
use crate::router::split::Split;
use crate::router::{RolloutTarget, Target};

fn load(yaml: &str) -> crate::snapshot::Snapshot {
    crate::config::load_str(yaml, "routes.yaml", Path::new("/tmp/routes.yaml")).expect("valid")
}

const BASE: &str = "clusters:\n  canary: { endpoints: [http://127.0.0.1:1] }\n  stable: { endpoints: [http://127.0.0.1:2] }\ndefault: stable\n";

fn routes(block: &str) -> String {
    format!("{BASE}rules:\n  - name: r\n    rollout: {block}\n    salt: s1\n")
}

fn target(snap: &crate::snapshot::Snapshot) -> Arc<RolloutTarget> {
    match &snap.routing.rules[0].target {
        Target::Rollout(t) => t.clone(),
        _ => panic!("not a rollout"),
    }
}

#[test]
fn routing_at_a_share_is_the_split_with_the_same_salt() {
    let snap = load(&routes("{from: stable, to: canary, steps: [5, 25, 100]}"));
    let t = target(&snap);
    let reg = Rollouts::new(Metrics::new());
    reg.bind(&snap.rollouts);
    let h = reg.find("r").unwrap();
    let (canary, stable) = (
        snap.routing.cluster_index("canary").unwrap(),
        snap.routing.cluster_index("stable").unwrap(),
    );
    for (i, share) in [(0usize, 5.0), (1, 25.0)] {
        {
            let mut l = h.lock();
            l.state.step_index = i;
            let st = l.state.clone();
            drop(l);
            h.publish(&st);
        }
        let split = Split::new(
            "s1",
            [(canary, "canary", share), (stable, "stable", 100.0 - share)],
        );
        let mut to = 0;
        for u in 0..4000 {
            let userid = format!("call-{u}");
            let (got, pick) = t.choose(&userid, |_| true).unwrap();
            assert_eq!(
                Some(got),
                split.choose(&userid, |_| true),
                "{userid} at {share}%"
            );
            assert_eq!(pick.share_bp, (share * 100.0) as u32);
            to += usize::from(got == canary);
        }
        let seen = to as f64 / 4000.0;
        assert!((seen - share / 100.0).abs() < 0.02, "{seen} at {share}%");
    }
    // Share 0 (aborted) and 100 (completed), and a draining side.
    h.act(wall_ms(), Action::Abort, None).unwrap();
    assert!((0..500).all(|u| t.choose(&format!("u{u}"), |_| true).unwrap().0 == stable));
    assert_eq!(t.choose("u", |c| c != stable).unwrap().0, canary);
    h.act(wall_ms(), Action::Promote, None).unwrap();
    assert!((0..500).all(|u| t.choose(&format!("u{u}"), |_| true).unwrap().0 == canary));
    assert_eq!(t.choose("u", |c| c != canary).unwrap().0, stable);
    assert_eq!(t.choose("u", |_| false), None);
}

#[test]
fn an_unchanged_block_keeps_its_state_and_a_changed_one_restarts() {
    let m = Metrics::new();
    let reg = Rollouts::new(m.clone());
    let a = load(&routes("{from: stable, to: canary, steps: [1, 5, 100]}"));
    reg.bind(&a.rollouts);
    let h = reg.find("r").unwrap();
    reg.act("r", Action::Pause, Some("lunch")).unwrap();
    let e = h.pick().epoch;
    h.settle(h.to_id, e, Outcome::Failed);
    // The same block, written differently, in a new generation: everything carries over.
    let b = load(&format!(
        "{}  - name: other\n    cluster: canary\n",
        routes("{from: stable, to: canary, steps: [1.0, 5, 100], min_calls: 200}")
    ));
    reg.bind(&b.rollouts);
    let hb = reg.find("r").unwrap();
    assert!(!Arc::ptr_eq(&h, &hb));
    assert_eq!(hb.state().status, Status::Paused);
    assert_eq!(hb.pick(), h.pick());
    assert_eq!(
        hb.views().1.counts.failed,
        1,
        "the step's counts carry over"
    );
    // A call counted on the old handle after the swap still lands in the same counts.
    h.settle(h.to_id, e, Outcome::Failed);
    assert_eq!(hb.views().1.counts.failed, 2);
    assert_eq!(
        m.rollout_transitions
            .with_label_values(&["r", "restart"])
            .get(),
        0
    );
    // A changed block restarts at step 1 in a new epoch, counted.
    let c = load(&routes("{from: stable, to: canary, steps: [2, 5, 100]}"));
    reg.bind(&c.rollouts);
    let hc = reg.find("r").unwrap();
    let st = hc.state();
    assert_eq!((st.status, st.step_index), (Status::Running, 0));
    assert!(st.epoch > e);
    assert_eq!(hc.views().1.counts.failed, 0);
    assert_eq!(st.last.unwrap().kind, Kind::Restart);
    assert_eq!(
        m.rollout_transitions
            .with_label_values(&["r", "restart"])
            .get(),
        1
    );
    assert_eq!(m.rollout_share.with_label_values(&["r"]).get(), 2.0);
    // Gone from the file: gone from the registry.
    let d = load(&format!("{BASE}rules: []\n"));
    reg.bind(&d.rollouts);
    assert!(reg.find("r").is_none());
    assert_eq!(reg.view()["rollouts"].as_array().unwrap().len(), 0);
}

#[test]
fn only_calls_of_the_current_epoch_count() {
    let reg = Rollouts::new(Metrics::new());
    let a = load(&routes("{from: stable, to: canary, steps: [1, 5, 100]}"));
    reg.bind(&a.rollouts);
    let h = reg.find("r").unwrap();
    let e1 = h.pick().epoch;
    reg.settle(h.rule_id, h.from_id, e1, Outcome::Completed);
    reg.settle(h.rule_id, h.to_id, e1, Outcome::Transferred);
    reg.observe_turn(h.rule_id, h.to_id, e1, Duration::from_millis(3));
    // Another cluster, another rule, epoch 0: not this rollout's.
    reg.settle(h.rule_id, names::intern("elsewhere"), e1, Outcome::Failed);
    reg.settle(names::intern("not-r"), h.to_id, e1, Outcome::Failed);
    let (from, to) = h.views();
    assert_eq!(
        (
            from.counts.completed,
            to.counts.transferred,
            to.counts.failed
        ),
        (1, 1, 0)
    );
    assert!(to.turn_p99_ms.is_some() && from.turn_p99_ms.is_none());
    reg.act("r", Action::Abort, None).unwrap();
    reg.act("r", Action::Resume, None).unwrap();
    let e2 = h.pick().epoch;
    assert!(e2 > e1);
    // A call that started before the restart ends now: it does not count for the new step.
    reg.settle(h.rule_id, h.to_id, e1, Outcome::Failed);
    assert_eq!(h.views().1.counts.ended(), 0);
    reg.settle(h.rule_id, h.to_id, e2, Outcome::Failed);
    assert_eq!(h.views().1.counts.failed, 1);
}

#[test]
fn actions_answer_unknown_and_conflicts() {
    let reg = Rollouts::new(Metrics::new());
    let a = load(&routes("{from: stable, to: canary, steps: [1, 100]}"));
    reg.bind(&a.rollouts);
    assert_eq!(reg.act("nope", Action::Pause, None), Err(ActError::Unknown));
    let v = reg.act("r", Action::Abort, Some("by hand")).unwrap();
    assert_eq!(v["status"], "aborted");
    assert_eq!(v["share"], 0.0);
    assert_eq!(
        v["last_transition"]["reason"],
        "aborted by the operator: by hand"
    );
    assert!(matches!(
        reg.act("r", Action::Abort, None),
        Err(ActError::Conflict(_))
    ));
}

#[test]
fn the_view_has_the_agreed_shape() {
    let reg = Rollouts::new(Metrics::new());
    let a = load(&routes(
        "{from: stable, to: canary, steps: [1, 5, 25, 50, 100], step_min: 10m, min_calls: 200}",
    ));
    reg.bind(&a.rollouts);
    let v = reg.view();
    let r = &v["rollouts"][0];
    for k in [
        "name",
        "from",
        "to",
        "status",
        "advance",
        "steps",
        "step_index",
        "share",
        "step_started_at",
        "at_step_seconds",
        "may_advance_in_seconds",
        "min_calls",
        "sides",
        "verdicts",
        "last_transition",
        "series",
    ] {
        assert!(r.get(k).is_some(), "missing {k}: {r}");
    }
    assert_eq!(r["steps"], serde_json::json!([1.0, 5.0, 25.0, 50.0, 100.0]));
    assert_eq!(
        (r["status"].as_str(), r["share"].as_f64()),
        (Some("running"), Some(1.0))
    );
    assert!(r["may_advance_in_seconds"].as_f64().unwrap() > 590.0);
    for side in ["from", "to"] {
        for k in [
            "cluster",
            "ended",
            "completed",
            "transferred",
            "failed",
            "abandoned",
            "turn_p99_ms",
        ] {
            assert!(r["sides"][side].get(k).is_some(), "{side}.{k}");
        }
    }
    let crit: Vec<&str> = r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["criterion"].as_str().unwrap())
        .collect();
    assert_eq!(crit, vec!["failed", "abandoned", "turn_p99"]);
    assert_eq!(r["verdicts"][0]["threshold"], "+1%");
    assert_eq!(r["verdicts"][2]["threshold"], "1.5x");
    assert!(r["last_transition"].is_null());
    assert_eq!(r["series"][0]["share"], 1.0);
}

#[test]
fn state_survives_a_save_and_a_load() {
    let yaml = routes("{from: stable, to: canary, steps: [1, 5, 100]}");
    let reg = Rollouts::new(Metrics::new());
    let a = load(&yaml);
    reg.bind(&a.rollouts);
    let h = reg.find("r").unwrap();
    reg.act("r", Action::Pause, None).unwrap();
    let e = h.pick().epoch;
    h.settle(h.from_id, e, Outcome::Abandoned);
    h.observe_turn(h.from_id, e, Duration::from_millis(40));
    let section = StateSection(reg.clone());
    use crate::pins::persist::Section;
    assert!(section.take_dirty());
    assert!(!section.take_dirty());
    let mut lines = Vec::new();
    section.save(&mut lines);
    assert_eq!(lines.len(), 1);

    let again = Rollouts::new(Metrics::new());
    let mut with_garbage = lines.clone();
    with_garbage.push("not json".into());
    assert_eq!(again.restore_lines(&with_garbage), (1, 1));
    let b = load(&yaml);
    again.bind(&b.rollouts);
    let hb = again.find("r").unwrap();
    assert_eq!(hb.state(), h.state());
    assert_eq!(hb.pick(), h.pick());
    assert_eq!(hb.views(), h.views());
    // A changed block does not take the saved state.
    let third = Rollouts::new(Metrics::new());
    third.restore_lines(&lines);
    let c = load(&routes("{from: stable, to: canary, steps: [1, 10, 100]}"));
    third.bind(&c.rollouts);
    assert_eq!(third.find("r").unwrap().state().status, Status::Running);
}
