//! The token API (`POST /oifde/rest/api/gettoken`, A6) and the check of `inparams.auth_token`.
//!
//! Tokens are JWTs (HS256) signed with the tenant's secret, with the tenant in the header's `kid`
//! and in `sub`, and an `exp`. They are self-contained: any backend instance or process loaded
//! with the same tenants file accepts any other's tokens. Without a tenants file every token (or
//! none) is accepted and the token API hands out tokens to anyone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::located::{Located, LocatedErrors};

/// Default token lifetime, seconds (the protocol's default).
pub const DEFAULT_EXPIRE_SECS: u64 = 3600;
/// The `iss` of every token this backend makes.
pub const ISSUER: &str = "graygate-odfs";
/// The key of tokens handed out when no tenants are configured (never checked).
const OPEN_KEY: &[u8] = b"graygate-odfs-open";

/// The tenants file: `tenants: { <appKey>: { secret: ..., expire_time: 3600 } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantsFile {
    tenants: BTreeMap<String, RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    secret: String,
    #[serde(default)]
    expire_time: Option<u64>,
}

struct Tenant {
    secret: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    expire_secs: u64,
}

/// The claims of a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

/// Why a token API request or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid appKey or appSecret")]
    BadCredentials,
    #[error("auth_token is missing")]
    Missing,
    #[error("auth_token is not a token of this ODFS: {0}")]
    Invalid(String),
    #[error("auth_token names an unknown tenant")]
    UnknownTenant,
    #[error("auth_token has expired")]
    Expired,
}

/// Token keys of every tenant; `open` when no tenants file was given.
pub struct TokenKeys {
    tenants: HashMap<String, Tenant>,
    open: bool,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("TokenKeys")
            .field("tenants", &self.tenants.len())
            .field("open", &self.open)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    /// Accept any token.
    pub fn open() -> Self {
        TokenKeys {
            tenants: HashMap::new(),
            open: true,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Read a tenants file; errors carry `file:line:column`.
    pub fn load(path: &Path) -> Result<Self, LocatedErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            LocatedErrors(vec![Located::new(
                &name,
                0,
                0,
                "",
                format!("cannot read the tenants file: {e}"),
            )])
        })?;
        Self::from_text(&name, &text)
    }

    /// Parse a tenants file's text.
    pub fn from_text(file: &str, text: &str) -> Result<Self, LocatedErrors> {
        let raw: RawTenantsFile = serde_yaml::from_str(text)
            .map_err(|e| LocatedErrors(vec![Located::from_yaml(file, &e)]))?;
        let mut errors = LocatedErrors::default();
        if raw.tenants.is_empty() {
            errors.push(Located::at_path(
                file,
                text,
                "tenants",
                "the file defines no tenant",
            ));
        }
        let mut tenants = HashMap::new();
        for (name, t) in raw.tenants {
            if t.secret.is_empty() {
                errors.push(Located::at_path(
                    file,
                    text,
                    &format!("tenants.{name}.secret"),
                    "the secret is empty",
                ));
            }
            if t.expire_time == Some(0) {
                errors.push(Located::at_path(
                    file,
                    text,
                    &format!("tenants.{name}.expire_time"),
                    "expire_time is at least 1 second",
                ));
            }
            let secret = t.secret.into_bytes();
            tenants.insert(
                name,
                Tenant {
                    encoding: EncodingKey::from_secret(&secret),
                    decoding: DecodingKey::from_secret(&secret),
                    secret,
                    expire_secs: t.expire_time.unwrap_or(DEFAULT_EXPIRE_SECS),
                },
            );
        }
        if errors.is_empty() {
            Ok(TokenKeys {
                tenants,
                open: false,
            })
        } else {
            Err(errors.sorted())
        }
    }

    /// The token API: a signed token and its lifetime in seconds for `appKey`/`appSecret`.
    pub fn issue(&self, app_key: &str, app_secret: &str) -> Result<(String, u64), TokenError> {
        let (key, expire) = if self.open {
            (EncodingKey::from_secret(OPEN_KEY), DEFAULT_EXPIRE_SECS)
        } else {
            let t = self
                .tenants
                .get(app_key)
                .ok_or(TokenError::BadCredentials)?;
            if !same_bytes(&t.secret, app_secret.as_bytes()) {
                return Err(TokenError::BadCredentials);
            }
            (t.encoding.clone(), t.expire_secs)
        };
        let iat = now_secs();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: app_key.to_string(),
            iat,
            exp: iat + expire,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(app_key.to_string());
        let token = jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((token, expire))
    }

    /// Check a dialog turn's `auth_token`; always `Ok` when open.
    pub fn check(&self, token: Option<&str>) -> Result<(), TokenError> {
        if self.open {
            return Ok(());
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no tenant (kid)".to_string()))?;
        let tenant = self.tenants.get(&kid).ok_or(TokenError::UnknownTenant)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.set_issuer(&[ISSUER]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &tenant.decoding, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid(e.to_string()),
                }
            })?;
        if data.claims.sub != kid {
            return Err(TokenError::Invalid("tenant mismatch".to_string()));
        }
        Ok(())
    }
}

/// Compare secrets without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "tenants:\n  tenant001:\n    secret: s3cret\n  tenant002:\n    secret: other\n    expire_time: 60\n";

    #[test]
    fn issues_and_checks_tokens() {
        let keys = TokenKeys::from_text("t.yaml", FILE).unwrap_or_else(|e| panic!("{e}"));
        let (tok, exp) = keys
            .issue("tenant001", "s3cret")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exp, 3600);
        assert_eq!(keys.check(Some(&tok)), Ok(()));
        assert_eq!(keys.issue("tenant002", "other").map(|t| t.1), Ok(60));
        assert_eq!(
            keys.issue("tenant001", "wrong"),
            Err(TokenError::BadCredentials)
        );
        assert_eq!(
            keys.issue("nobody", "s3cret"),
            Err(TokenError::BadCredentials)
        );
        assert_eq!(keys.check(None), Err(TokenError::Missing));
        assert!(matches!(
            keys.check(Some("abc")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn another_tenants_key_is_a_forgery() {
        let keys = TokenKeys::from_text("t.yaml", FILE).unwrap_or_else(|e| panic!("{e}"));
        // Signed with tenant002's secret but claiming tenant001.
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "tenant001".into(),
            iat: now_secs(),
            exp: now_secs() + 60,
        };
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("tenant001".into());
        let forged = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"other"))
            .unwrap_or_default();
        assert!(matches!(
            keys.check(Some(&forged)),
            Err(TokenError::Invalid(_))
        ));
        let expired = Claims {
            exp: now_secs() - 10,
            ..claims
        };
        let old = jsonwebtoken::encode(&h, &expired, &EncodingKey::from_secret(b"s3cret"))
            .unwrap_or_default();
        assert_eq!(keys.check(Some(&old)), Err(TokenError::Expired));
    }

    #[test]
    fn open_keys_accept_anything() {
        let keys = TokenKeys::open();
        assert!(keys.issue("any", "").is_ok());
        assert_eq!(keys.check(None), Ok(()));
    }

    #[test]
    fn bad_files_are_located() {
        let e = TokenKeys::from_text(
            "t.yaml",
            "tenants:\n  a:\n    secret: \"\"\n    colour: x\n",
        )
        .err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("t.yaml:4:5: "), "{e}");
        let e = TokenKeys::from_text("t.yaml", "tenants:\n  a:\n    secret: \"\"\n").err();
        assert_eq!(
            e.map(|e| e.to_string()).unwrap_or_default(),
            "t.yaml:3:5: tenants.a.secret: the secret is empty"
        );
    }
}
