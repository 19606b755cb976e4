//! Field extraction from a dialog body without building a JSON tree.
//!
//! A `DeserializeSeed` walks the top-level object: `userid` and `inaction` are read, keys that
//! lead towards a wanted path (the [`ProbeSpec`] trie) are descended into, and every other value
//! is skipped with `IgnoredAny` (which still checks its syntax, so the whole body must be valid
//! JSON). A repeated `userid` or `inaction` key is refused: the gateway and the ODFS must never
//! read two different call ids from one body.

use std::fmt;

use compact_str::CompactString;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{Dialog, PathNode, ProbeError, ProbeSpec, Turn, INPUT_LEAF};
use crate::protocol::{Inaction, INPUT_HANGUP, MAX_USERID_CHARS};

#[derive(Default)]
struct Found {
    userid: Option<Result<CompactString, ()>>,
    inaction: Option<Result<i64, ()>>,
    hangup: bool,
    fields: Vec<(u16, CompactString)>,
}

/// Scan `body` for the turn's facts. `dialog` comes from the URL.
pub fn scan(body: &[u8], dialog: Dialog, spec: &ProbeSpec) -> Result<Turn, ProbeError> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    TopSeed {
        spec,
        found: &mut found,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| ProbeError::BadJson(e.to_string()))?;
    let userid = match found.userid {
        None => return Err(ProbeError::MissingUserid),
        Some(Err(())) => return Err(ProbeError::BadUserid),
        Some(Ok(u)) => u,
    };
    let inaction = match found.inaction {
        None => return Err(ProbeError::MissingInaction),
        Some(Err(())) => return Err(ProbeError::BadInaction),
        Some(Ok(i)) => Inaction(i),
    };
    Ok(Turn {
        dialog,
        userid,
        inaction,
        hangup: found.hangup,
        fields: found.fields,
    })
}

/// The userid, if the body is a JSON object that has a valid one; used to put the userid into
/// error bodies for turns that failed later checks.
pub fn userid_hint(body: &[u8]) -> Option<CompactString> {
    let spec = ProbeSpec::default();
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = TopSeed {
        spec: &spec,
        found: &mut found,
    }
    .deserialize(&mut de);
    found.userid.and_then(Result::ok)
}

struct TopSeed<'s, 'f> {
    spec: &'s ProbeSpec,
    found: &'f mut Found,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<KeyStr<'de>>()? {
            match key.as_str() {
                "userid" => {
                    if self.found.userid.is_some() {
                        return Err(de::Error::custom("duplicate key `userid`"));
                    }
                    self.found.userid = Some(map.next_value::<UseridValue>()?.0);
                }
                "inaction" => {
                    if self.found.inaction.is_some() {
                        return Err(de::Error::custom("duplicate key `inaction`"));
                    }
                    self.found.inaction = Some(map.next_value::<InactionValue>()?.0);
                }
                k => match self.spec.root.child(k) {
                    Some(node) => map.next_value_seed(NodeSeed {
                        node,
                        found: self.found,
                    })?,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
            }
        }
        Ok(())
    }
}

/// A value somewhere on a wanted path: an object to descend into, or a leaf to keep.
struct NodeSeed<'s, 'f> {
    node: &'s PathNode,
    found: &'f mut Found,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl NodeSeed<'_, '_> {
    fn keep(self, v: &str) {
        match self.node.leaf {
            Some(INPUT_LEAF) => self.found.hangup = v == INPUT_HANGUP,
            Some(i) => self.found.fields.push((i, CompactString::from(v))),
            None => {}
        }
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<KeyStr<'de>>()? {
            match self.node.child(key.as_str()) {
                Some(node) => map.next_value_seed(NodeSeed {
                    node,
                    found: &mut *self.found,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.keep(v);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.keep(itoa::Buffer::new().format(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.keep(itoa::Buffer::new().format(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.keep(&v.to_string());
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.keep(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A map key, borrowed from the body when it has no escapes.
enum KeyStr<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyStr<'_> {
    fn as_str(&self) -> &str {
        match self {
            KeyStr::Borrowed(s) => s,
            KeyStr::Owned(s) => s,
        }
    }
}

impl<'de> de::Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr::Owned(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `userid`: a string of 1–64 characters, else `Err(())` (reported as GW.BAD_USERID).
struct UseridValue(Result<CompactString, ()>);

impl<'de> de::Deserialize<'de> for UseridValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UseridValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a userid")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UseridValue, E> {
                let n = v.chars().count();
                Ok(UseridValue(if (1..=MAX_USERID_CHARS).contains(&n) {
                    Ok(CompactString::from(v))
                } else {
                    Err(())
                }))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<UseridValue, E> {
                Ok(UseridValue(Err(())))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<UseridValue, E> {
                Ok(UseridValue(Err(())))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<UseridValue, E> {
                Ok(UseridValue(Err(())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<UseridValue, E> {
                Ok(UseridValue(Err(())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<UseridValue, E> {
                Ok(UseridValue(Err(())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UseridValue, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(UseridValue(Err(())))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<UseridValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(UseridValue(Err(())))
            }
        }
        d.deserialize_any(V)
    }
}

/// `inaction`: an integer, or a string holding a decimal integer (A2), else `Err(())`.
struct InactionValue(Result<i64, ()>);

impl<'de> de::Deserialize<'de> for InactionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InactionValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an inaction")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InactionValue, E> {
                Ok(InactionValue(Ok(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InactionValue, E> {
                Ok(InactionValue(i64::try_from(v).map_err(|_| ())))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<InactionValue, E> {
                Ok(InactionValue(Err(())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InactionValue, E> {
                let t = v.trim();
                let ok = !t.is_empty()
                    && t.bytes()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
                Ok(InactionValue(if ok {
                    t.parse().map_err(|_| ())
                } else {
                    Err(())
                }))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<InactionValue, E> {
                Ok(InactionValue(Err(())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<InactionValue, E> {
                Ok(InactionValue(Err(())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<InactionValue, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(InactionValue(Err(())))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<InactionValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(InactionValue(Err(())))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProbeSpec {
        let mut s = ProbeSpec::new();
        s.add_path("inparams.channelType");
        s
    }

    #[test]
    fn reads_userid_inaction_input_and_fields() {
        let body = br#"{ "seat":"vir", "inparams": {"call_id":"x","input":"hangup","channelType":"WEB","n":{"a":[1,2]}},
            "userid" : "1528780879-9581", "inaction": 9, "extparams": {"k": [true, null]}}"#;
        let t = scan(body, Dialog::V2(101), &spec()).unwrap();
        assert_eq!(t.userid, "1528780879-9581");
        assert_eq!(t.inaction, Inaction(9));
        assert!(t.hangup);
        assert_eq!(t.field(0), Some("WEB"));
    }

    #[test]
    fn numeric_string_inaction_is_accepted() {
        let t = scan(br#"{"userid":"u1","inaction":"8"}"#, Dialog::V1, &spec()).unwrap();
        assert_eq!(t.inaction, Inaction(8));
        assert!(!t.hangup);
    }

    #[test]
    fn errors_in_the_contract_order() {
        let s = spec();
        assert!(matches!(
            scan(b"[1]", Dialog::V1, &s),
            Err(ProbeError::BadJson(_))
        ));
        assert!(matches!(
            scan(b"", Dialog::V1, &s),
            Err(ProbeError::BadJson(_))
        ));
        assert!(matches!(
            scan(br#"{"userid":"u"} x"#, Dialog::V1, &s),
            Err(ProbeError::BadJson(_))
        ));
        assert_eq!(
            scan(br#"{"inaction":8}"#, Dialog::V1, &s),
            Err(ProbeError::MissingUserid)
        );
        assert_eq!(
            scan(br#"{"userid":7,"inaction":8}"#, Dialog::V1, &s),
            Err(ProbeError::BadUserid)
        );
        assert_eq!(
            scan(br#"{"userid":"","inaction":8}"#, Dialog::V1, &s),
            Err(ProbeError::BadUserid)
        );
        let long = format!(r#"{{"userid":"{}","inaction":8}}"#, "a".repeat(65));
        assert_eq!(
            scan(long.as_bytes(), Dialog::V1, &s),
            Err(ProbeError::BadUserid)
        );
        assert_eq!(
            scan(br#"{"userid":"u"}"#, Dialog::V1, &s),
            Err(ProbeError::MissingInaction)
        );
        assert_eq!(
            scan(br#"{"userid":"u","inaction":8.5}"#, Dialog::V1, &s),
            Err(ProbeError::BadInaction)
        );
        assert_eq!(
            scan(br#"{"userid":"u","inaction":"x"}"#, Dialog::V1, &s),
            Err(ProbeError::BadInaction)
        );
    }

    #[test]
    fn duplicate_userid_is_refused() {
        let r = scan(
            br#"{"userid":"a","userid":"b","inaction":8}"#,
            Dialog::V1,
            &spec(),
        );
        assert!(matches!(r, Err(ProbeError::BadJson(m)) if m.contains("duplicate")));
    }

    #[test]
    fn escaped_keys_and_values() {
        let t = scan(
            br#"{"user\u0069d":"a\"b","inaction":8}"#,
            Dialog::V1,
            &spec(),
        )
        .unwrap();
        assert_eq!(t.userid, "a\"b");
    }

    #[test]
    fn userid_hint_reads_what_it_can() {
        assert_eq!(
            userid_hint(br#"{"userid":"abc","inaction":"x"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(userid_hint(b"nope"), None);
    }
}
