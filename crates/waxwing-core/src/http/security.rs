//! What every HTTP response carries, and the `Origin` check of the routes
//! that open XMPP sessions (WebSocket, BOSH).

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tower_http::set_header::SetResponseHeaderLayer;

use super::Secure;
use crate::Config;
use crate::config::http::origin_of;

/// The default `Content-Security-Policy`: only this origin's scripts, styles,
/// fonts and connections (`'self'` covers `ws:`/`wss:` of the same host in
/// CSP 3), images and media also from `data:`/`blob:` and any `https:` host
/// (shared files of other servers), no plugins, no framing, no `<base>`.
/// `'wasm-unsafe-eval'` lets the web client's OMEMO library compile its
/// WebAssembly; `'unsafe-inline'` styles are what its web components set.
/// A route may send its own policy (uploaded files get `sandbox`).
pub fn content_security_policy(config: &Config) -> String {
    let mut connect = String::from("'self'");
    if let Some(origin) = config.http.public_url.as_deref().and_then(origin_of) {
        let ws = origin
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        connect.push_str(&format!(" {origin} {ws}"));
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: https:; \
         media-src 'self' data: blob: https:; font-src 'self' data:; \
         connect-src {connect}; worker-src 'self' blob:; manifest-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Adds the security headers to every response of `app` (kept when a
/// route set its own).
pub(crate) fn layers(app: Router, config: &Config) -> Router {
    let csp = HeaderValue::from_str(&content_security_policy(config))
        .expect("the policy is ASCII without control characters");
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ];
    let mut app = app.layer(SetResponseHeaderLayer::if_not_present(
        header::CONTENT_SECURITY_POLICY,
        csp,
    ));
    for (name, value) in fixed {
        app = app.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    app
}

/// A request whose `Origin` may not open a session here: `403 Forbidden`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRefused(pub String);

impl IntoResponse for OriginRefused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            format!("origin {} is not allowed here\n", self.0),
        )
            .into_response()
    }
}

/// Whether a browser page of the request's `Origin` may open an XMPP
/// session (WebSocket handshake, BOSH request). Allowed: requests without
/// `Origin` (non-browser clients, which carry credentials of their own and
/// are not subject to cross-site request forgery), the server's own origin
/// (the scheme of the connection and the `Host` header), the origin of
/// `[http] public_url`, and `[http] allowed_origins` (`"*"`: any).
pub fn check_origin(
    config: &Config,
    headers: &HeaderMap,
    secure: Secure,
) -> Result<(), OriginRefused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refused = || OriginRefused(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    let Ok(origin) = origin.to_str() else {
        return Err(refused());
    };
    let http = &config.http;
    if http.any_origin {
        return Ok(());
    }
    // "null" (sandboxed frames, file: pages) and anything unparsable is refused.
    let Some(origin_norm) = origin_of(origin) else {
        return Err(refused());
    };
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| {
            let scheme = if secure.0 { "https" } else { "http" };
            origin_of(&format!("{scheme}://{host}"))
        });
    let public = http.public_url.as_deref().and_then(origin_of);
    if own.as_deref() == Some(origin_norm.as_str())
        || public.as_deref() == Some(origin_norm.as_str())
        || http.allowed_origins.contains(&origin_norm)
    {
        Ok(())
    } else {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn same_origin_and_configured_origins_pass_others_are_refused() {
        let c = Config::parse(
            "[http]\npublic_url = \"https://chat.example.org/\"\nallowed_origins = [\"https://app.example.net\"]\n",
        )
        .unwrap();
        let plain = Secure(false);
        let tls = Secure(true);
        assert!(check_origin(&c, &headers(&[]), plain).is_ok());
        assert!(
            check_origin(
                &c,
                &headers(&[
                    ("host", "localhost:5280"),
                    ("origin", "http://localhost:5280")
                ]),
                plain
            )
            .is_ok()
        );
        // Same host, other scheme: another origin.
        assert!(
            check_origin(
                &c,
                &headers(&[
                    ("host", "localhost:5280"),
                    ("origin", "https://localhost:5280")
                ]),
                plain
            )
            .is_err()
        );
        assert!(
            check_origin(
                &c,
                &headers(&[
                    ("host", "internal:5443"),
                    ("origin", "https://chat.example.org")
                ]),
                tls
            )
            .is_ok()
        );
        assert!(
            check_origin(
                &c,
                &headers(&[("host", "x"), ("origin", "https://APP.example.net:443")]),
                tls
            )
            .is_ok()
        );
        for evil in [
            "https://evil.example",
            "null",
            "https://chat.example.org.evil",
        ] {
            assert!(
                check_origin(&c, &headers(&[("host", "x"), ("origin", evil)]), tls).is_err(),
                "{evil}"
            );
        }
        let any = Config::parse("[http]\nallowed_origins = [\"*\"]\n").unwrap();
        assert!(check_origin(&any, &headers(&[("origin", "https://evil.example")]), tls).is_ok());
    }
}
