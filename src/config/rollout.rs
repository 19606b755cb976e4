//! The `rollout:` block of a rule (spec §11): its serde mirror and its validation into the
//! rollout stage's [`RolloutSpec`]. `config::compile` calls [`compile`] for a rule that has the
//! block and turns the errors it returns into `file:line:column` errors like every other check,
//! so `graygate check`, a failed reload and the 422 of `POST /admin/reload` report them.

use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::value::{Checked, HumanDuration, Percent};
use crate::rollout::spec::{
    Advance, Criteria, RolloutSpec, DEFAULT_CONFIDENCE, DEFAULT_MIN_CALLS, DEFAULT_STEP_MIN,
};

/// `rollout:` as written. Like every raw struct (see `config::raw`), unknown keys are collected
/// by the reader and values are [`Checked`], so every error of the block is reported in one run.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawRollout {
    /// The baseline cluster (required).
    pub from: Option<String>,
    /// The cluster being rolled out (required).
    pub to: Option<String>,
    /// Shares (percent) of new calls sent to `to`, in order, e.g. `[1, 5, 25, 50, 100]` (required).
    #[schemars(with = "Option<Vec<f64>>")]
    pub steps: Option<Checked<Vec<f64>>>,
    /// Least time at a step before it may advance. Default 10m.
    #[schemars(with = "Option<String>")]
    pub step_min: Option<Checked<HumanDuration>>,
    /// Ended calls needed on each side, within the step, before judging. Default 200.
    #[schemars(with = "Option<u64>")]
    pub min_calls: Option<Checked<u64>>,
    /// `auto` (default) or `manual` (wait at every step for `graygate rollout resume`).
    #[schemars(with = "Option<RawAdvance>")]
    pub advance: Option<Checked<RawAdvance>>,
    /// Of the one-sided test that `to` is worse than `from`. Default 95%.
    #[schemars(with = "Option<String>")]
    pub confidence: Option<Checked<Percent>>,
    /// Criteria that abort the rollout; any one that holds aborts.
    pub abort_when: Option<RawAbortWhen>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAdvance {
    Auto,
    Manual,
}

/// `abort_when:`; a key left out keeps its default, `null` switches the criterion off.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawAbortWhen {
    /// e.g. `+1%` (default): to's failed-call share exceeds from's by more than 1 point.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub failed: Option<Option<Checked<Margin>>>,
    /// Default `+2%`.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub abandoned: Option<Option<Checked<Margin>>>,
    /// Default off; e.g. `+5%`.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub transferred: Option<Option<Checked<Margin>>>,
    /// Default `1.5x`: to's p99 turn time exceeds 1.5 times from's.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<String>")]
    pub turn_p99: Option<Option<Checked<Ratio>>>,
}

/// A key that is present: `Some(None)` for `null`, `Some(Some(v))` for a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A margin in percentage points, written `+1%` (the `+` is optional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin(pub f64);

impl<'de> Deserialize<'de> for Margin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let n = t
            .strip_prefix('+')
            .unwrap_or(t)
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite())
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "`{s}` is not a margin in percentage points such as +1%"
                ))
            })?;
        if !(0.0..100.0).contains(&n) {
            return Err(de::Error::custom(format!(
                "`{s}` must be at least +0% and below +100%"
            )));
        }
        Ok(Margin(n / 100.0))
    }
}

/// A ratio written `1.5x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a ratio such as 1.5x")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                let n = v
                    .trim()
                    .strip_suffix('x')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| E::custom(format!("`{v}` is not a ratio such as 1.5x")))?;
                if n < 1.0 {
                    return Err(E::custom(format!(
                        "`{v}` must be at least 1x (a canary faster than the baseline is not a failure)"
                    )));
                }
                Ok(Ratio(n))
            }
        }
        d.deserialize_str(V)
    }
}

/// A validation error: the key path below the rule (`rollout.steps[2]`) and the message.
pub type RolloutError = (String, String);

/// Check and compile a rule's `rollout:` block. `clusters` says whether a cluster name exists.
/// Every error found is returned, each with the key path below `at` (e.g. `rules[3]`).
pub fn compile(
    name: &str,
    at: &str,
    raw: &RawRollout,
    cluster_exists: impl Fn(&str) -> bool,
) -> Result<RolloutSpec, Vec<RolloutError>> {
    let mut errs: Vec<RolloutError> = Vec::new();
    let mut err = |k: &str, m: String| errs.push((format!("{at}.rollout.{k}"), m));
    /// A checked value, or its error reported at `k`.
    fn get<T: Clone>(
        err: &mut impl FnMut(&str, String),
        k: &str,
        v: Option<&Checked<T>>,
    ) -> Option<T> {
        match v? {
            Checked::Ok(t) => Some(t.clone()),
            Checked::Bad(msg) => {
                err(k, msg.clone());
                None
            }
        }
    }
    let (from, to) = (
        raw.from.clone().unwrap_or_default(),
        raw.to.clone().unwrap_or_default(),
    );
    for (k, c) in [("from", &raw.from), ("to", &raw.to)] {
        match c {
            None => err(k, format!("a rollout needs `{k}`: the name of a cluster")),
            Some(c) if !cluster_exists(c) => err(k, format!("unknown cluster `{c}`")),
            Some(_) => {}
        }
    }
    if raw.from.is_some() && from == to {
        err(
            "to",
            format!("`to` must differ from `from` (both are `{from}`)"),
        );
    }
    let raw_steps = get(&mut err, "steps", raw.steps.as_ref());
    match &raw_steps {
        None if raw.steps.is_none() => err(
            "steps",
            "a rollout needs `steps`, e.g. [1, 5, 25, 50, 100]".into(),
        ),
        Some(v) if v.is_empty() => err(
            "steps",
            "a rollout needs at least one step, e.g. [1, 5, 25, 50, 100]".into(),
        ),
        _ => {}
    }
    let raw_steps = raw_steps.unwrap_or_default();
    let mut steps = Vec::with_capacity(raw_steps.len());
    for (i, &s) in raw_steps.iter().enumerate() {
        if !(s.is_finite() && s > 0.0 && s <= 100.0) {
            err(
                &format!("steps[{i}]"),
                format!("a step is a share of new calls above 0 and at most 100, got {s}"),
            );
            continue;
        }
        let bp = (s * 100.0).round() as u32;
        if bp == 0 || (bp as f64 - s * 100.0).abs() > 1e-6 {
            err(
                &format!("steps[{i}]"),
                format!("steps are percentages with at most two decimals, got {s}"),
            );
            continue;
        }
        if steps.last().is_some_and(|&prev| bp <= prev) {
            err(
                &format!("steps[{i}]"),
                format!(
                    "steps must rise: {s} does not come after {}",
                    raw_steps[i - 1]
                ),
            );
            continue;
        }
        steps.push(bp);
    }
    let step_min = get(&mut err, "step_min", raw.step_min.as_ref())
        .map(|d| d.0)
        .unwrap_or(DEFAULT_STEP_MIN);
    if step_min.is_zero() {
        err("step_min", "must be longer than 0".into());
    }
    let min_calls = get(&mut err, "min_calls", raw.min_calls.as_ref()).unwrap_or(DEFAULT_MIN_CALLS);
    if min_calls == 0 {
        err(
            "min_calls",
            "at least 1 ended call per side is needed to judge a step".into(),
        );
    }
    let confidence = get(&mut err, "confidence", raw.confidence.as_ref())
        .map(|p| p.0)
        .unwrap_or(DEFAULT_CONFIDENCE);
    if !(0.5..1.0).contains(&confidence) {
        err(
            "confidence",
            format!(
                "must be at least 50% and below 100%, got {}%",
                confidence * 100.0
            ),
        );
    }
    let mut criteria = Criteria::default();
    if let Some(a) = &raw.abort_when {
        let margins = [
            ("abort_when.failed", &a.failed, &mut criteria.failed),
            (
                "abort_when.abandoned",
                &a.abandoned,
                &mut criteria.abandoned,
            ),
            (
                "abort_when.transferred",
                &a.transferred,
                &mut criteria.transferred,
            ),
        ];
        for (k, v, slot) in margins {
            match v {
                None => {}
                Some(None) => *slot = None,
                Some(Some(c)) => {
                    if let Some(m) = get(&mut err, k, Some(c)) {
                        *slot = Some(m.0);
                    }
                }
            }
        }
        match &a.turn_p99 {
            None => {}
            Some(None) => criteria.turn_p99 = None,
            Some(Some(c)) => {
                if let Some(r) = get(&mut err, "abort_when.turn_p99", Some(c)) {
                    criteria.turn_p99 = Some(r.0);
                }
            }
        }
    }
    let advance = match get(&mut err, "advance", raw.advance.as_ref()) {
        Some(RawAdvance::Manual) => Advance::Manual,
        _ => Advance::Auto,
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut spec = RolloutSpec {
        name: Arc::from(name),
        from: Arc::from(from.as_str()),
        to: Arc::from(to.as_str()),
        steps,
        step_min,
        min_calls,
        advance,
        confidence,
        criteria,
        key: 0,
    };
    spec.key = block_key(&spec);
    Ok(spec)
}

/// The hash of a block's meaning (defaults filled in), so rewriting `5` as `5.0` or adding a
/// comment keeps the state, and changing anything that matters restarts the rollout.
fn block_key(s: &RolloutSpec) -> u64 {
    let canon = format!(
        "v1|{}|{}|{:?}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
        s.from,
        s.to,
        s.steps,
        s.step_min.as_millis(),
        s.min_calls,
        s.advance.as_str(),
        s.confidence,
        s.criteria.failed,
        s.criteria.abandoned,
        s.criteria.transferred,
        s.criteria.turn_p99,
    );
    xxhash_rust::xxh3::xxh3_64(canon.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(yaml: &str) -> Result<RolloutSpec, Vec<RolloutError>> {
        let raw: RawRollout = serde_yaml::from_str(yaml).expect("yaml");
        compile("r", "rules[0]", &raw, |c| c == "stable" || c == "canary")
    }

    #[test]
    fn defaults_are_the_spec_ones() {
        let s = parse("{from: stable, to: canary, steps: [1, 5, 25, 50, 100]}").unwrap();
        assert_eq!(s.steps, vec![100, 500, 2500, 5000, 10000]);
        assert_eq!(s.step_min, Duration::from_secs(600));
        assert_eq!(s.min_calls, 200);
        assert_eq!(s.advance, Advance::Auto);
        assert_eq!(s.confidence, 0.95);
        assert_eq!(s.criteria, Criteria::default());
    }

    #[test]
    fn criteria_can_be_set_and_switched_off() {
        let s = parse(
            "{from: stable, to: canary, steps: [0.5, 100], advance: manual, confidence: 99%,\n abort_when: {failed: null, transferred: +5%, turn_p99: 2x}}",
        )
        .unwrap();
        assert_eq!(s.steps, vec![50, 10000]);
        assert_eq!(s.advance, Advance::Manual);
        assert_eq!(s.confidence, 0.99);
        assert_eq!(
            s.criteria,
            Criteria {
                failed: None,
                abandoned: Some(0.02),
                transferred: Some(0.05),
                turn_p99: Some(2.0)
            }
        );
    }

    #[test]
    fn every_error_is_reported() {
        let errs = parse(
            "{from: nope, to: nope, steps: [5, 5, 0, 101], step_min: 0s, min_calls: 0, confidence: 40%}",
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "rules[0].rollout.from",
                "rules[0].rollout.to",
                "rules[0].rollout.to",
                "rules[0].rollout.steps[1]",
                "rules[0].rollout.steps[2]",
                "rules[0].rollout.steps[3]",
                "rules[0].rollout.step_min",
                "rules[0].rollout.min_calls",
                "rules[0].rollout.confidence",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn bad_values_are_errors_at_their_keys() {
        for (y, path) in [
            (
                "{from: stable, to: canary, steps: [1], abort_when: {failed: 1%%}}",
                "abort_when.failed",
            ),
            (
                "{from: stable, to: canary, steps: [1], abort_when: {failed: -1%}}",
                "abort_when.failed",
            ),
            (
                "{from: stable, to: canary, steps: [1], abort_when: {turn_p99: 0.5x}}",
                "abort_when.turn_p99",
            ),
            (
                "{from: stable, to: canary, steps: [1], abort_when: {turn_p99: fast}}",
                "abort_when.turn_p99",
            ),
            (
                "{from: stable, to: canary, steps: [1], advance: sometimes}",
                "advance",
            ),
            (
                "{from: stable, to: canary, steps: [1], step_min: soon}",
                "step_min",
            ),
            ("{from: stable, to: canary, steps: [one]}", "steps"),
            ("{to: canary, steps: [1]}", "from"),
            ("{from: stable, to: canary}", "steps"),
        ] {
            let errs = parse(y).unwrap_err();
            assert_eq!(errs.len(), 1, "{y}: {errs:?}");
            assert_eq!(
                errs[0].0,
                format!("rules[0].rollout.{path}"),
                "{y}: {errs:?}"
            );
        }
    }

    #[test]
    fn the_key_follows_meaning_not_spelling() {
        let a = parse("{from: stable, to: canary, steps: [1, 5]}").unwrap();
        let b = parse("{from: stable, to: canary, steps: [1.0, 5], min_calls: 200}").unwrap();
        let c = parse("{from: stable, to: canary, steps: [1, 10]}").unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
    }
}
