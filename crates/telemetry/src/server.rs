//! The HTTP endpoint: `/metrics` and `/healthz`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::{ui, Metrics, CONTENT_TYPE};

/// Where the endpoint listens unless configured otherwise: loopback only.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:8080";

/// The health callback: `Ok(())` when the gRPC socket is served and the
/// store is open, else `Err(reason)`. It runs on the request's task, so it
/// must be quick and must not block.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What can go wrong setting up or running the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The address cannot be listened on (port taken, address not local,
    /// privileged port ...).
    #[error(
        "cannot listen for metrics on {addr} (is another process using it? set metrics_address \
         / --metrics-address to another address, or to \"off\")"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// A metrics address that does not parse.
    #[error("invalid metrics address {input:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        input: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The server stopped with an I/O error.
    #[error("metrics endpoint failed")]
    Serve(#[source] std::io::Error),
}

/// Parses the metrics listen address: `off` disables the endpoint (`None`),
/// otherwise `IP:PORT` (`127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:8080` for
/// all interfaces) or `localhost:PORT`. A bare `:PORT` or `PORT` is refused
/// rather than guessed, so that listening on all interfaces is always
/// written out.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, TelemetryError> {
    let t = s.trim();
    let invalid = |reason: String| TelemetryError::InvalidAddress {
        input: s.to_owned(),
        reason,
    };
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if t.is_empty() {
        return Err(invalid(format!(
            "empty; write \"off\" to disable the endpoint or an address such as \
             {DEFAULT_METRICS_ADDRESS}"
        )));
    }
    if let Some(port) = t.strip_prefix(':') {
        return Err(invalid(format!(
            "no host given; write 127.0.0.1:{port} for this machine only, or 0.0.0.0:{port} if all \
             interfaces are wanted"
        )));
    }
    if t.parse::<u16>().is_ok() {
        return Err(invalid(format!(
            "a port alone; write 127.0.0.1:{t} for this machine only, or 0.0.0.0:{t} if all \
             interfaces are wanted"
        )));
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("{port:?} is not a port number (0-65535)")))?;
        return Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
    }
    t.parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid(format!(
            "expected IP:PORT (such as {DEFAULT_METRICS_ADDRESS}, [::1]:8080 or 0.0.0.0:8080) or \
             \"off\"; host names other than localhost are not resolved"
        ))
    })
}

/// Binds the endpoint's socket, so that a taken port is reported before the
/// daemon starts serving anything else.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) metrics: Arc<Metrics>,
    health: HealthCheck,
    /// The address listened on (the page answers only local `Host`s when
    /// it is loopback).
    pub(crate) local: Option<SocketAddr>,
}

async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Image names and digests are in the series: the same rule as the page.
    if let Some(r) = ui::refuse_foreign_host(state.local, &headers) {
        return r;
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn health_handler(State(state): State<AppState>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    match (state.health)() {
        Ok(()) => (StatusCode::OK, text, "ok").into_response(),
        Err(reason) => {
            tracing::debug!(%reason, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                format!("unhealthy: {reason}\n"),
            )
                .into_response()
        }
    }
}

fn router(metrics: Arc<Metrics>, health: HealthCheck, local: Option<SocketAddr>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/", get(ui::index))
        .route("/ui", get(ui::index))
        .route("/ui.js", get(ui::script))
        .route("/ui.css", get(ui::style))
        .route("/favicon.svg", get(ui::favicon))
        .route(crate::api::NODE_PATH, get(ui::node))
        .with_state(AppState {
            metrics,
            health,
            local,
        })
}

/// Serves `/metrics`, `/healthz`, the node's page (`/`) and its JSON API
/// (`/api/v1/node`) on an already bound listener until `shutdown`
/// completes.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        if addr.ip().is_loopback() {
            tracing::info!(%addr, "serving /metrics, /healthz and the node's page on http://{addr}/");
        } else {
            tracing::warn!(
                %addr,
                "serving /metrics, /healthz and the node's page beyond loopback: restrict access to the port"
            );
        }
    }
    // The page's throughput chart: one sample a second while serving.
    let sampler = {
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                m.sample_throughput();
            }
        })
    };
    let served = axum::serve(listener, router(metrics, health, local))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(TelemetryError::Serve);
    sampler.abort();
    served
}

/// [`bind`] then [`serve_on`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let listener = bind(addr).await?;
    serve_on(listener, metrics, health, shutdown).await
}
