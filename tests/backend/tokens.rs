//! The token API and `auth_token` checks across backend instances.

use super::*;

async fn get_token(odfs: &Odfs, key: &str, secret: &str) -> Reply {
    post(
        &odfs.url(0, "/oifde/rest/api/gettoken"),
        json!({ "appKey": key, "appSecret": secret }),
    )
    .await
}

#[tokio::test]
async fn a_token_from_one_backend_is_accepted_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = Some(tenants_file(dir.path()));
    let a = Odfs::start(BackendOptions {
        tenants: tenants.clone(),
        ..demo("a")
    })
    .await;
    let b = Odfs::start(BackendOptions {
        tenants,
        ..demo("b")
    })
    .await;
    let r = get_token(&a, "tenant001", "s3cret-one").await;
    assert_eq!(
        (
            r.status,
            r.body["errorCode"].as_i64(),
            r.body["expireTime"].as_i64()
        ),
        (200, Some(0), Some(3600))
    );
    assert_eq!(r.instance, "a");
    let mut c = Caller::new(&b, 0, "token-across");
    c.token = Some(r.body["authToken"].as_str().unwrap().to_string());
    let r = c.start().await;
    assert_eq!(r.instance, "b");
}

#[tokio::test]
async fn wrong_secrets_get_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    for (key, secret) in [("tenant001", "s3cret-two"), ("tenant009", "s3cret-one")] {
        let r = get_token(&odfs, key, secret).await;
        assert_eq!(r.status, 401);
        assert_ne!(r.body["errorCode"].as_i64(), Some(0));
        assert!(r.body.get("authToken").is_none());
    }
    let r = post(
        &odfs.url(0, "/oifde/rest/api/gettoken"),
        json!({ "appKey": 1 }),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn missing_expired_or_forged_tokens_get_401() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let odfs = Odfs::start(BackendOptions {
        tenants: Some(tenants_file(dir.path())),
        ..demo("t")
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let make = |secret: &[u8], exp: u64| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("tenant001".into());
        let claims =
            json!({ "iss": "graygate-odfs", "sub": "tenant001", "iat": now - 7200, "exp": exp });
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let cases = [
        None,
        Some(make(b"s3cret-one", now - 3600)),
        Some(make(b"not-the-secret", now + 3600)),
        Some("eyJhbGciOiJIUzI1NiJ9.e30.AAAA".to_string()),
    ];
    for token in cases {
        let mut c = Caller::new(&odfs, 0, "auth-bad");
        c.token = token.clone();
        let r = c.turn(8, json!({}), None).await;
        assert_eq!(
            (r.status, r.body["errorCode"].as_str()),
            (401, Some("ODFS.AUTH")),
            "{token:?}"
        );
        assert_eq!(
            (r.body["ret"].as_i64(), r.body["userid"].as_str()),
            (Some(-1), Some("auth-bad"))
        );
    }
    let mut c = Caller::new(&odfs, 0, "auth-good");
    c.token = Some(make(b"s3cret-one", now + 60));
    c.start().await;
}

#[test]
fn bad_tenants_files_are_rejected_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tenants.yaml");
    std::fs::write(&p, "tenants:\n  tenant001:\n    secret: \"\"\n  tenant002:\n    secret: x\n    expire_time: 0\n").unwrap();
    let err = Backend::new(BackendOptions {
        tenants: Some(p.clone()),
        ..BackendOptions::default()
    })
    .unwrap_err();
    let f = p.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{f}:3:5: tenants.tenant001.secret: the secret is empty\n\
             {f}:6:5: tenants.tenant002.expire_time: expire_time is at least 1 second"
        )
    );
    assert!(matches!(err, graygate::backend::BackendError::Tenants(_)));
}
