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
    pub tunings: Arc<parking_lot::RwLock<Option<Store<CameraTuning>>>>,
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
    let store = probes.tunings.read().clone();
    probes.metrics.render(store.as_ref())
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// GETs `url` (plain http://) and returns its status when it is a success: what the chart's
/// `helm test` pod asks of the operator's Service.
pub async fn check(url: &str) -> anyhow::Result<axum::http::StatusCode> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: axum::http::Uri = url.parse()?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs can be checked"
    );
    let client: Client<_, axum::body::Body> = Client::builder(TokioExecutor::new()).build_http();
    let request = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri));
    let status = request
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 10 s"))??
        .status();
    anyhow::ensure!(status.is_success(), "answered {status}");
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_the_cache_is_held_leaves_metrics_serving() {
        let probes = Probes::new(Metrics::default());
        let held = probes.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.tunings.write();
            panic!("a reconcile task panics while it holds the lock");
        })
        .join();
        assert!(panicked.is_err());
        let rendered = metrics(State(probes)).await;
        assert!(rendered.contains("autotuner_"), "{rendered}");
    }

    #[tokio::test]
    async fn the_check_passes_on_a_ready_operator_and_fails_on_one_that_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let probes = Probes::new(Metrics::default());
        tokio::spawn(serve_on(listener, probes.clone()));
        let url = |path: &str| format!("http://{address}{path}");

        assert_eq!(check(&url("/healthz")).await.unwrap(), StatusCode::OK);
        let refused = check(&url("/readyz")).await.unwrap_err();
        assert!(refused.to_string().contains("503"), "{refused}");
        probes.ready.store(true, Ordering::Relaxed);
        assert_eq!(check(&url("/readyz")).await.unwrap(), StatusCode::OK);
        assert!(check("https://127.0.0.1/readyz").await.is_err());
        // Nothing listens there any more.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}/readyz", closed.local_addr().unwrap());
        drop(closed);
        assert!(check(&gone).await.is_err());
    }
}
