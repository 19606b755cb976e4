//! Validating value types of `routes.yaml`: each checks itself where serde reads it, so an error
//! comes with the node's line and column for free, and keeps the user's text in the message.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A value of the file that checks itself but does not stop the read when it is wrong: the
/// node is read whole (as a YAML value), then converted, and a failure is kept as its message.
/// `compile` turns `Bad` into an error at the value's key path, so one bad duration does not
/// hide the unknown cluster three rules below it (spec §2: every error in one run).
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<T> {
    Ok(T),
    Bad(String),
}

impl<T> Checked<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Checked::Ok(v) => Some(v),
            Checked::Bad(_) => None,
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Reading the node as a Value consumes it completely, whatever its shape, so the
        // parser stays in step and the rest of the file is still read.
        let v = serde_yaml::Value::deserialize(d)?;
        Ok(match T::deserialize(v) {
            Ok(t) => Checked::Ok(t),
            Err(e) => Checked::Bad(e.to_string()),
        })
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Checked<T> {
    fn schema_name() -> String {
        T::schema_name()
    }
    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        T::json_schema(gen)
    }
    fn is_referenceable() -> bool {
        T::is_referenceable()
    }
}

/// A duration written `250ms`, `5s`, `30m`, `1h` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write e.g. 250ms, 5s, 30m"
                ))
            })
    }
}

/// A size written `64KiB`, `1MiB`, `512B` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 64KiB or 65536"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" | "k" | "kB" => 1024,
            "MiB" | "M" | "MB" => 1024 * 1024,
            "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "`{s}`: unknown size unit `{other}` (use B, KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 64KiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One item of a `vdn:` list: `101` or an inclusive range `200-299`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdnSpec {
    pub lo: u32,
    pub hi: u32,
}

impl VdnSpec {
    pub fn parse(s: &str) -> Result<VdnSpec, String> {
        let t = s.trim();
        let num = |x: &str| -> Result<u32, String> {
            let x = x.trim();
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{s}` is not a vdn or range (write 101 or 200-299)"
                ));
            }
            x.parse::<u32>()
                .map_err(|_| format!("`{s}`: vdn out of range (0..=4294967295)"))
        };
        match t.split_once('-') {
            Some((a, b)) => {
                let (lo, hi) = (num(a)?, num(b)?);
                if lo > hi {
                    return Err(format!(
                        "range `{s}` is not ordered (start {lo} > end {hi})"
                    ));
                }
                Ok(VdnSpec { lo, hi })
            }
            None => num(t).map(|v| VdnSpec { lo: v, hi: v }),
        }
    }
}

impl<'de> Deserialize<'de> for VdnSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VdnSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vdn (101) or an inclusive range (\"200-299\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VdnSpec, E> {
                let v = u32::try_from(v)
                    .map_err(|_| E::custom(format!("vdn {v} does not fit in u32")))?;
                Ok(VdnSpec { lo: v, hi: v })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<VdnSpec, E> {
                Err(E::custom(format!("vdn `{v}` is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VdnSpec, E> {
                VdnSpec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A positive split weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weight(pub f64);

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = f64::deserialize(d)?;
        if !(w.is_finite() && w > 0.0) {
            return Err(de::Error::custom(format!(
                "weight `{w}` must be a positive number"
            )));
        }
        Ok(Weight(w))
    }
}

/// The type lives with the upstreams, which use it; its parsing is a config value's.
pub use crate::upstream::EndpointUrl;

impl EndpointUrl {
    pub fn parse(s: &str) -> Result<EndpointUrl, String> {
        // Credentials would be shown in the open: /metrics labels, /admin/config, the access
        // log and the upstream Host header all carry the endpoint. Refuse them, and never
        // repeat them in the error.
        if let Some(masked) = mask_userinfo(s) {
            return Err(format!(
                "endpoint `{masked}` carries credentials before `@`; an endpoint URL may not (they would be shown in metrics, logs and /admin/config)"
            ));
        }
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("endpoint `{s}` must be an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("endpoint `{s}` has no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("endpoint `{s}` must not have a path or query"));
        }
        if authority.host().is_empty() {
            return Err(format!("endpoint `{s}` has no host"));
        }
        // `http::Authority` accepts any digits after the colon and then reports no port at
        // all, which would quietly connect to port 80.
        let a = authority.as_str();
        let after_host = &a[a.rfind(']').map_or(0, |i| i + 1)..];
        if let Some(i) = after_host.rfind(':') {
            let port = &after_host[i + 1..];
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ if port.is_empty() => {
                    return Err(format!("endpoint `{s}` has an empty port"));
                }
                _ => {
                    return Err(format!(
                        "endpoint `{s}`: port `{port}` is out of range (1-65535)"
                    ))
                }
            }
        }
        Ok(EndpointUrl {
            text: s.trim_end_matches('/').to_string(),
            https,
            authority,
        })
    }
}

impl<'de> Deserialize<'de> for EndpointUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EndpointUrl::parse(&s).map_err(de::Error::custom)
    }
}

/// `scheme://***@host…` when `s` has userinfo in its authority, else `None`.
fn mask_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some(format!("{scheme}://***@{}", &rest[at + 1..]))
}

/// A regular expression, compiled when read so a bad one points at its line.
#[derive(Debug, Clone)]
pub struct RegexSource(pub regex::Regex);

impl<'de> Deserialize<'de> for RegexSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s).map(RegexSource).map_err(|e| {
            de::Error::custom(format!(
                "regex `{s}` does not compile: {}",
                first_line(&e.to_string())
            ))
        })
    }
}

/// A share written `50%` or a fraction `0.5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a share such as 50%")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                if (0.0..=1.0).contains(&v) {
                    Ok(Percent(v))
                } else {
                    Err(E::custom(format!(
                        "share {v} must be between 0 and 1 (or write 50%)"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                let t = v.trim();
                let n: f64 = t
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| E::custom(format!("`{v}` is not a percentage such as 50%")))?;
                if (0.0..=100.0).contains(&n) {
                    Ok(Percent(n / 100.0))
                } else {
                    Err(E::custom(format!("`{v}` must be between 0% and 100%")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64KiB"), Ok(65536));
        assert_eq!(ByteSize::parse("100"), Ok(100));
        assert!(ByteSize::parse("12XB").is_err());
    }

    #[test]
    fn vdn_specs() {
        assert_eq!(VdnSpec::parse("200-299"), Ok(VdnSpec { lo: 200, hi: 299 }));
        assert!(VdnSpec::parse("299-200")
            .unwrap_err()
            .contains("not ordered"));
        assert!(VdnSpec::parse("x").is_err());
    }

    #[test]
    fn endpoints() {
        assert!(EndpointUrl::parse("http://10.0.0.1:8080").is_ok());
        assert!(
            EndpointUrl::parse("https://odfs.example:443/")
                .unwrap()
                .https
        );
        assert!(EndpointUrl::parse("ftp://x").is_err());
        assert!(EndpointUrl::parse("http://x/path").is_err());
        let e = EndpointUrl::parse("http://10.0.0.1:99999").unwrap_err();
        assert!(e.contains("port `99999` is out of range"), "{e}");
        assert!(EndpointUrl::parse("http://10.0.0.1:0").is_err());
        assert!(EndpointUrl::parse("http://10.0.0.1:").is_err());
        assert!(EndpointUrl::parse("http://[::1]:8080").is_ok());
        assert!(EndpointUrl::parse("http://[::1]").is_ok());
        assert!(EndpointUrl::parse("http://[::1]:70000").is_err());
        let e = EndpointUrl::parse("http://user:secret@10.0.0.1:8080").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("secret"), "{e}");
        assert!(EndpointUrl::parse("https://token@odfs.example").is_err());
    }
}
