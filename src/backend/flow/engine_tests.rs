//! Unit tests of the engine against the demo flow and small inline flows.

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::*;
use crate::backend::flow::compile::compile_text;

const U: &str = "1528780879-9581";

struct Harness {
    flows: Flows,
    slot: Option<Call>,
    cap: u32,
}

impl Harness {
    fn demo() -> Self {
        Harness {
            flows: Flows::demo().unwrap_or_else(|e| panic!("{e}")),
            slot: None,
            cap: 3,
        }
    }

    fn turn(
        &mut self,
        inaction: i64,
        inparams: Value,
        ext: Option<Value>,
    ) -> Result<Answer, TurnError> {
        let inparams: Map<String, Value> = inparams.as_object().cloned().unwrap_or_default();
        let ext: Option<Map<String, Value>> = ext.and_then(|e| e.as_object().cloned());
        let t = Turn {
            inaction,
            inparams: &inparams,
            extparams: ext.as_ref(),
            wall: "2018090407:16:24",
            now: Instant::now(),
        };
        step(&self.flows, self.cap, U, &mut self.slot, &t)
    }

    fn ok(&mut self, inaction: i64, inparams: Value) -> Answer {
        self.turn(inaction, inparams, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn input(&mut self, input: &str) -> Answer {
        self.ok(9, json!({ "input": input }))
    }

    fn start(&mut self) -> Answer {
        self.ok(8, json!({ "call_id": U, "call_sor_id": "13500000001", "call_dst_id": "10086", "auth_token": "t" }))
    }
}

#[test]
fn seven_then_eight() {
    let mut h = Harness::demo();
    let a = h.ok(7, json!({ "call_dst_id": "10086", "call_sor_id": "135" }));
    assert_eq!(a, Answer::new(7));
    assert_eq!(
        h.turn(9, json!({ "input": "1" }), None),
        Err(TurnError::NotStarted)
    );
    let a = h.ok(8, json!({ "call_dst_id": "10086" }));
    assert_eq!(a.outaction, 9);
    assert_eq!(
        a.param("prompt_text"),
        Some("Welcome to the graygate demo line.")
    );
    assert_eq!(
        h.slot.as_ref().map(|c| c.var("call_sor_id")),
        Some("135"),
        "vars of 7 stay"
    );
}

#[test]
fn balance_menu_and_variables() {
    let mut h = Harness::demo();
    let a = h.start();
    assert_eq!(
        (a.outaction, a.param("inter_idx"), a.param("model_type")),
        (9, Some("1"), Some("1000000"))
    );
    assert_eq!(a.param("prompt_wav"), Some("welcome.wav"));
    assert_eq!(a.param("language"), Some("1"));
    let a = h.input("playover");
    assert_eq!(
        a.param("model_type"),
        Some("1010101"),
        "one digit, # confirms"
    );
    assert_eq!(a.param("inter_idx"), Some("2"));
    let a = h.input("1#");
    assert_eq!(
        a.param("prompt_text"),
        Some("The balance of account 13500000001 is 42 euros and 17 cents.")
    );
    let a = h.input("playover");
    assert!(a
        .param("prompt_text")
        .unwrap_or("")
        .starts_with("To hear it again"));
    let a = h.input("9");
    assert_eq!(
        a.param("prompt_text"),
        Some("Thank you for calling. Goodbye.")
    );
    let a = h.input("playover");
    assert_eq!((a.outaction, a.param("release_reason")), (10, Some("0")));
    assert!(h.slot.is_some(), "the backend's own 10 keeps the call");
    assert_eq!(h.input("1").outaction, 10, "any turn after the end gets 10");
    let a = h.input("hangup");
    assert_eq!(
        (a.outaction, a.param("start_time")),
        (10, Some("2018090407:16:24"))
    );
    assert!(h.slot.is_none(), "hangup deletes the call");
    assert_eq!(
        h.turn(9, json!({ "input": "hangup" }), None),
        Err(TurnError::NoCall)
    );
}

#[test]
fn queue_query_then_transfer_success_and_failure() {
    let mut h = Harness::demo();
    h.start();
    h.input("playover");
    let a = h.input("2#");
    assert_eq!(a.outaction, 12);
    assert_eq!(
        (
            a.param("prompt_type"),
            a.param("skill_id"),
            a.param("moduleName")
        ),
        (Some("2"), Some("1"), Some("queue"))
    );
    let q = json!({ "queueIndex": "3", "agentCount": "5", "estimateTime": "40", "idleAgentCount": "0" });
    let a = h
        .turn(9, json!({ "input": "" }), Some(q))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.param("prompt_text"),
        Some("You are number 3 in the queue; the wait is about 40 seconds.")
    );
    let a = h.input("playover");
    assert_eq!(
        (a.outaction, a.param("trans_type"), a.param("route_value")),
        (11, Some("1"), Some("20001"))
    );
    assert_eq!(a.param("call_sor_id"), Some("13500000001"));
    let mut failed = Harness {
        flows: Harness::demo().flows,
        slot: h.slot.clone(),
        cap: 3,
    };
    // Success: 10, then the hangup report gets 10 again.
    let a = h.ok(11, json!({ "trans_result": "0" }));
    assert_eq!((a.outaction, a.param("release_reason")), (10, Some("0")));
    let a = h.ok(11, json!({ "trans_result": "0", "input": "hangup" }));
    assert_eq!(a.outaction, 10);
    assert!(h.slot.is_none());
    // Failure: the failure branch plays an apology.
    let a = failed.ok(11, json!({ "trans_result": "1" }));
    assert_eq!(
        (a.outaction, a.param("prompt_text")),
        (9, Some("All our agents are busy."))
    );
    let a = failed.input("playover");
    let a2 = failed.input("playover");
    assert_eq!(
        a.param("prompt_text"),
        Some("Please leave a message after the tone.")
    );
    assert_eq!(
        (a2.param("prompt_type"), a2.param("tone")),
        (Some("4"), Some("true"))
    );
    assert_eq!(
        a2.param("prompt_wav"),
        Some(format!("/var/odfs/voicemail/{U}.wav").as_str())
    );
}

#[test]
fn no_agents_goes_to_voicemail() {
    let mut h = Harness::demo();
    h.start();
    h.input("playover");
    h.input("2");
    let a = h
        .turn(
            9,
            json!({}),
            Some(json!({ "agentCount": 0, "queueIndex": "0" })),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.param("prompt_text"),
        Some("Please leave a message after the tone.")
    );
}

#[test]
fn misses_retry_then_give_up() {
    let mut h = Harness::demo();
    h.start();
    h.input("playover");
    for _ in 0..2 {
        assert_eq!(
            h.input("timeout").param("prompt_text"),
            Some("Sorry, I did not get that.")
        );
        assert!(h
            .input("playover")
            .param("prompt_text")
            .unwrap_or("")
            .starts_with("For your balance"));
    }
    let a = h.input("7");
    assert_eq!(
        (a.outaction, a.param("release_reason")),
        (10, Some("1")),
        "third miss: give up"
    );
}

#[test]
fn intents_match_keywords() {
    let mut h = Harness::demo();
    h.start();
    h.input("playover");
    let a = h.input("3");
    assert_eq!(a.param("model_type"), Some("1100000"));
    assert_eq!(
        h.ok(13, json!({})).param("recognize_type"),
        Some("1"),
        "recognition_after: 1"
    );
    let a = h.input("I would like to talk to a HUMAN please");
    assert_eq!(a.outaction, 12);
    assert_eq!(h.slot.as_ref().map(|c| c.var("intent")), Some("agent"));
}

#[test]
fn recognition_polls() {
    let mut h = Harness::demo();
    h.start();
    let a = h.ok(13, json!({}));
    assert_eq!((a.outaction, a.param("recognize_type")), (13, Some("0")));
    assert_eq!(
        h.slot.as_ref().map(|c| c.inter_idx),
        Some(1),
        "13 is not a dialog turn"
    );
}

#[test]
fn sys_err_is_capped() {
    let mut h = Harness::demo();
    h.start();
    let a1 = h.input("sys_err");
    assert_eq!(
        a1.param("prompt_text"),
        Some("Welcome to the graygate demo line."),
        "replayed"
    );
    h.input("sys_err");
    let a = h.input("sys_err");
    assert_eq!((a.outaction, a.param("release_reason")), (10, Some("1")));
    assert_eq!(h.input("hangup").param("release_reason"), Some("1"));
}

#[test]
fn sys_err_counter_resets_on_other_input() {
    let mut h = Harness::demo();
    h.start();
    h.input("sys_err");
    h.input("sys_err");
    h.input("playover");
    assert_eq!(h.input("sys_err").outaction, 9);
}

#[test]
fn unknown_inaction_and_unknown_call() {
    let mut h = Harness::demo();
    assert_eq!(
        h.turn(12, json!({}), None),
        Err(TurnError::UnknownInaction(12))
    );
    assert_eq!(h.turn(13, json!({}), None), Err(TurnError::NoCall));
    assert_eq!(
        h.turn(11, json!({ "trans_result": "0" }), None),
        Err(TurnError::NoCall)
    );
}

#[test]
fn flows_are_picked_by_access_code() {
    let text = "default: \"1\"\nflows:\n  \"1\":\n    start: a\n    nodes: { a: { hangup: {} } }\n  \"2\":\n    start: b\n    nodes: { b: { play: { text: \"hi {call_dst_id} {nope} {x y}\", next: b } } }\n";
    let flows = compile_text("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let mut h = Harness {
        flows,
        slot: None,
        cap: 3,
    };
    assert_eq!(
        h.ok(8, json!({ "call_dst_id": "2" })).param("prompt_text"),
        Some("hi 2  {x y}")
    );
    assert_eq!(
        h.ok(8, json!({ "call_dst_id": "3" })).outaction,
        10,
        "unknown code: the default flow"
    );
}

#[test]
fn numbers_read_like_strings() {
    let mut h = Harness::demo();
    h.ok(8, json!({ "call_dst_id": 10086 }));
    h.input("playover");
    let a = h.ok(9, json!({ "input": 1 }));
    assert!(a
        .param("prompt_text")
        .unwrap_or("")
        .starts_with("The balance"));
}
