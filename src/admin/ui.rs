//! The console, `GET /admin/ui` (spec §12): one page of hand-written HTML, CSS and JavaScript
//! compiled into the binary. It needs nothing from outside: the page loads its script and
//! style from beside it and reads the admin JSON endpoints; the Content-Security-Policy says
//! exactly that, so no other script, style, font, frame or request can run in it.
//!
//! The three files hold no data, so they are served without the admin token; the page asks
//! for the token and sends it as a bearer header with every request it makes.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::{respond, AdminBody};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Same-origin script, style and requests only; nothing inline, no frames, no forms posting.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page or one of its two assets, by path; `None` for any other path.
pub fn asset(path: &str) -> Option<Response<AdminBody>> {
    let (ctype, body) = match path {
        "/admin/ui" => ("text/html; charset=utf-8", INDEX),
        "/admin/ui/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/admin/ui/app.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut r = respond(StatusCode::OK, ctype, Bytes::from_static(body.as_bytes()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        // No outside script, style, font or request: every src/href is relative or data:.
        for text in [INDEX, SCRIPT, STYLE] {
            assert_eq!(
                text.matches("http://").count(),
                text.matches("http://www.w3.org/2000/svg").count()
            );
            assert!(!text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url("));
        }
        assert!(INDEX.contains(r#"<script src="ui/app.js" defer></script>"#));
        assert!(INDEX.contains(r#"href="ui/app.css""#));
        // Nothing inline that the policy would block.
        assert!(!INDEX.contains("style=") && !INDEX.contains("onclick="));
        assert_eq!(INDEX.matches("<script").count(), 1);
        // The token never goes into a cookie.
        assert!(!SCRIPT.contains("document.cookie"));
        assert!(SCRIPT.contains("credentials: 'omit'"));
    }

    #[test]
    fn headers() {
        let r = asset("/admin/ui").unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert!(r
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
        assert_eq!(
            asset("/admin/ui/app.js").unwrap().headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(asset("/admin/ui/other").is_none());
    }
}
