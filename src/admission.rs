//! What every request must be before any stage of the gateway looks at it (spec §3): not a
//! `CONNECT` (the gateway is no tunnel: 405), and on HTTP/1.1 exactly one `Host` (RFC 9112
//! §3.2: 400). Engine-neutral: it reads the method, version and headers only, so the hyper
//! service and any other HTTP/1 engine call the same function.

use http::{header, HeaderMap, Method, Version};

use crate::respond::GatewayError;

/// `Ok` when the request may go on to the dialog or other stages.
pub fn check(method: &Method, version: Version, headers: &HeaderMap) -> Result<(), GatewayError> {
    if method == Method::CONNECT {
        return Err(GatewayError::Connect);
    }
    if version == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), None) => {}
            (None, _) => return Err(GatewayError::BadHost("without a Host header")),
            (Some(_), Some(_)) => {
                return Err(GatewayError::BadHost("with more than one Host header"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hosts(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for i in 0..n {
            h.append(
                header::HOST,
                HeaderValue::from_str(&format!("h{i}")).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connect_and_host_counts() {
        assert_eq!(
            check(&Method::CONNECT, Version::HTTP_11, &hosts(1)),
            Err(GatewayError::Connect)
        );
        assert_eq!(
            check(&Method::CONNECT, Version::HTTP_2, &HeaderMap::new()),
            Err(GatewayError::Connect)
        );
        assert!(check(&Method::POST, Version::HTTP_11, &hosts(1)).is_ok());
        assert!(matches!(
            check(&Method::POST, Version::HTTP_11, &hosts(0)),
            Err(GatewayError::BadHost(_))
        ));
        assert!(matches!(
            check(&Method::GET, Version::HTTP_11, &hosts(2)),
            Err(GatewayError::BadHost(_))
        ));
        // HTTP/1.0 may omit Host; HTTP/2 carries :authority instead.
        assert!(check(&Method::GET, Version::HTTP_10, &hosts(0)).is_ok());
        assert!(check(&Method::POST, Version::HTTP_2, &hosts(0)).is_ok());
    }
}
