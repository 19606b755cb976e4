//! Compiled rule matchers: vdn sets, userid sets and patterns, body fields, headers.
//!
//! A rule's conditions all have to hold. Within `userid`, the lists are alternatives: the
//! condition holds when the userid is one of `exact`, starts with one of `prefix`, ends with one
//! of `suffix`, or matches `regex`.

use std::sync::Arc;

use ahash::AHashSet;
use http::{HeaderMap, HeaderName};

use super::split::Split;
use crate::probe::Turn;

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    /// Inclusive vdn ranges; `None` = no vdn condition. A V1 turn has no vdn and never matches a
    /// rule that has one.
    pub vdn: Option<Vec<(u32, u32)>>,
    pub userid: Option<UseridMatch>,
    /// (probe field index, accepted values).
    pub fields: Vec<(u16, Vec<String>)>,
    pub headers: Vec<(HeaderName, Vec<String>)>,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub enum Target {
    Cluster(usize),
    Split(Split),
    /// A progressive rollout (spec §11): a split whose share the rollout moves.
    Rollout(Arc<super::rollout::RolloutTarget>),
}

#[derive(Debug, Clone, Default)]
pub struct UseridMatch {
    pub exact: AHashSet<Box<str>>,
    pub prefix: Vec<String>,
    pub suffix: Vec<String>,
    pub regex: Option<regex::Regex>,
}

impl UseridMatch {
    pub fn matches(&self, userid: &str) -> bool {
        self.exact.contains(userid)
            || self.prefix.iter().any(|p| userid.starts_with(p.as_str()))
            || self.suffix.iter().any(|s| userid.ends_with(s.as_str()))
            || self.regex.as_ref().is_some_and(|r| r.is_match(userid))
    }
}

impl Rule {
    /// Do all of this rule's conditions hold for the turn? (The target is checked by the router.)
    pub fn conditions_hold(&self, turn: &Turn, headers: &HeaderMap) -> bool {
        if let Some(ranges) = &self.vdn {
            let Some(v) = turn.dialog.vdn() else {
                return false;
            };
            if !ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi) {
                return false;
            }
        }
        if let Some(u) = &self.userid {
            if !u.matches(&turn.userid) {
                return false;
            }
        }
        for (index, values) in &self.fields {
            match turn.field(*index) {
                Some(v) if values.iter().any(|x| x == v) => {}
                _ => return false,
            }
        }
        for (name, values) in &self.headers {
            let ok = headers
                .get_all(name)
                .iter()
                .any(|hv| hv.to_str().is_ok_and(|s| values.iter().any(|x| x == s)));
            if !ok {
                return false;
            }
        }
        true
    }
}
