//! The capture worker's HTTP server (port 9090 in a cluster): what applications and Prometheus
//! read from the camera's node.
//!
//! - `GET /metrics`: Prometheus text.
//! - `GET /v1/detections/latest`: the last inferred frame's detections as JSON (503 before the
//!   first one).
//! - `GET /v1/detections/stream`: Server-Sent Events, one `detections` event per inferred frame
//!   (its id is the frame index); a client that falls behind loses the oldest frames.
//! - `GET /v1/model`: the model serving and the last one refused.
//! - `GET /healthz`, `GET /readyz`: the process answers; the student serves (when it runs).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::edge::Edge;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
struct Shared {
    metrics: Metrics,
    edge: Option<Arc<Edge>>,
}

/// Binds `address` and serves [`router`] in the background; returns the bound address.
pub async fn listen(
    address: std::net::SocketAddr,
    metrics: Metrics,
    edge: Option<Arc<Edge>>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics, edge);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

pub fn router(metrics: Metrics, edge: Option<Arc<Edge>>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/v1/detections/latest", get(latest))
        .route("/v1/detections/stream", get(stream))
        .route("/v1/model", get(model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Shared { metrics, edge })
}

async fn render_metrics(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn no_inference() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "edge inference is off: no model is configured (spec.inference, or --model)",
    )
}

async fn latest(State(s): State<Shared>) -> Response {
    let Some(edge) = s.edge else {
        return no_inference();
    };
    match edge.latest() {
        Some(frame) => ([(header::CONTENT_TYPE, "application/json")], frame.json.clone()).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no frame has been inferred yet"),
    }
}

async fn stream(State(s): State<Shared>) -> Response {
    let Some(edge) = s.edge else {
        return no_inference();
    };
    let frames = edge.subscribe();
    let events = futures::stream::unfold(frames, |mut frames| async move {
        loop {
            match frames.recv().await {
                Ok(frame) => {
                    let event = Event::default()
                        .event("detections")
                        .id(frame.detections.frame.to_string())
                        .data(frame.json.as_str());
                    return Some((Ok::<_, Infallible>(event), frames));
                }
                // A slow client skips what it missed and goes on with the newest frames.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn model(State(s): State<Shared>) -> Response {
    let Some(edge) = s.edge else {
        return no_inference();
    };
    let serving = edge.serving().map(|(id, since)| {
        json!({ "version": id.version, "uri": autotuner_store::redact_uri(&id.uri), "since": rfc3339(since) })
    });
    let refused = edge.refused().map(|r| {
        json!({ "version": r.id.version, "uri": autotuner_store::redact_uri(&r.id.uri), "reason": r.reason, "time": rfc3339(r.at) })
    });
    axum::Json(json!({ "serving": serving, "refused": refused })).into_response()
}

async fn ready(State(s): State<Shared>) -> Response {
    match s.edge {
        Some(edge) if edge.serving().is_none() => {
            error(StatusCode::SERVICE_UNAVAILABLE, "the student is not serving yet")
        }
        _ => "ok".into_response(),
    }
}
