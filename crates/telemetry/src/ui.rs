//! The node's web page and its JSON API, on the metrics listener.
//!
//! The page is four static files embedded in the binary (no external
//! asset: the machines are offline): `index.html`, `ui.js`, `ui.css`. It
//! holds no data of its own; the script fetches [`crate::api::NodeState`]
//! and renders it with text nodes only. Every answer carries a strict
//! Content-Security-Policy (scripts and styles from this origin only, no
//! inline script, no frames, no forms), `nosniff`, and `no-referrer`.
//!
//! Read-only: only GET (and HEAD) are routed. When the listener is on
//! loopback, the page and the API answer only requests whose `Host` names
//! a loopback address or `localhost`, so a web site the operator visits
//! cannot read them through DNS rebinding.

use std::net::{IpAddr, SocketAddr};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::server::AppState;

pub(crate) const INDEX_HTML: &str = include_str!("ui/index.html");
pub(crate) const UI_JS: &str = include_str!("ui/ui.js");
pub(crate) const UI_CSS: &str = include_str!("ui/ui.css");
pub(crate) const FAVICON_SVG: &str = include_str!("ui/favicon.svg");

/// The page's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers every answer of the page and the API carries.
fn security_headers(
    content_type: &'static str,
    cache: &'static str,
) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
    ]
}

/// Whether `host` (a `Host` header) names this machine: a loopback IP or
/// `localhost`, with or without a port.
pub(crate) fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((inside, tail)) if tail.is_empty() || tail.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `None` when the request may be answered; the refusal otherwise. On a
/// loopback listener only local `Host`s are answered: a web page the
/// operator's browser opens elsewhere cannot reach the listener through
/// DNS rebinding (its `Host` is its own name).
pub(crate) fn refuse_foreign_host(
    local: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<Response> {
    let loopback = local.is_some_and(|a| a.ip().is_loopback());
    if !loopback {
        return None;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_local_host(host) {
        return None;
    }
    Some(
        (
            StatusCode::MISDIRECTED_REQUEST,
            security_headers("text/plain; charset=utf-8", "no-store"),
            "this page is served to this machine only: open it as http://127.0.0.1:PORT/ or http://localhost:PORT/\n",
        )
            .into_response(),
    )
}

fn asset(
    state: &AppState,
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    if let Some(r) = refuse_foreign_host(state.local, headers) {
        return r;
    }
    (security_headers(content_type, "no-cache"), body).into_response()
}

pub(crate) async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    asset(&state, &headers, "text/html; charset=utf-8", INDEX_HTML)
}

pub(crate) async fn script(State(state): State<AppState>, headers: HeaderMap) -> Response {
    asset(&state, &headers, "text/javascript; charset=utf-8", UI_JS)
}

pub(crate) async fn style(State(state): State<AppState>, headers: HeaderMap) -> Response {
    asset(&state, &headers, "text/css; charset=utf-8", UI_CSS)
}

pub(crate) async fn favicon(State(state): State<AppState>, headers: HeaderMap) -> Response {
    asset(&state, &headers, "image/svg+xml", FAVICON_SVG)
}

pub(crate) async fn node(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_foreign_host(state.local, &headers) {
        return r;
    }
    let s = state.metrics.node_state();
    match serde_json::to_vec(&s) {
        Ok(body) => (security_headers("application/json", "no-store"), body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the node state");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                security_headers("text/plain; charset=utf-8", "no-store"),
                "cannot encode the node state\n",
            )
                .into_response()
        }
    }
}
