//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use autotuner_api::CameraTuning;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::runtime::reflector::Store;

use crate::Metrics;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct Probes {
    pub metrics: Metrics,
    /// The CameraTuning cache, once this replica leads (standby replicas have none).
    pub tunings: Arc<std::sync::RwLock<Option<Store<CameraTuning>>>>,
    /// Set once the process can serve: it reached the API server (standby) or its caches are
    /// filled (leader).
    pub ready: Arc<AtomicBool>,
}

impl Probes {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            tunings: Arc::default(),
            ready: Arc::default(),
        }
    }
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

pub async fn serve(address: SocketAddr, probes: Probes) -> std::io::Result<()> {
    serve_on(tokio::net::TcpListener::bind(address).await?, probes).await
}

pub async fn serve_on(listener: tokio::net::TcpListener, probes: Probes) -> std::io::Result<()> {
    axum::serve(listener, router(probes)).await
}

async fn metrics(State(probes): State<Probes>) -> String {
    let store = probes.tunings.read().expect("store lock").clone();
    match store {
        Some(store) => probes.metrics.render(&store),
        None => probes.metrics.render(&kube::runtime::reflector::store().0),
    }
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
