//! `autotuner-annotator`: serves a teacher model over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use autotuner_annotator::api::ModelInfo;
use autotuner_annotator::batcher::{BatchConfig, Batcher};
use autotuner_annotator::metrics::Metrics;
use autotuner_annotator::server::{ServerConfig, routers};
use autotuner_annotator::tls::{self, TlsFiles};
use autotuner_api::contract;
use autotuner_detect::{Detector, DevicePreference, Family, Runtime};
use clap::{Parser, ValueEnum};

/// The CameraTuning API's detector families (`annotation.teacher.model.family`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FamilyArg {
    #[value(name = "yolo")]
    Yolo,
    #[value(name = "ssdRaw")]
    SsdRaw,
    #[value(name = "tfObjectDetection")]
    TfObjectDetection,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
}

/// Serves a teacher detector: POST /v1/annotate, the Open Inference Protocol v2 under /v2,
/// /metrics, /healthz, /readyz.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The ONNX model: a path, `file://` path, `http(s)://` or `s3://` URL (downloaded at start).
    #[arg(long, env = contract::ENV_TEACHER_URI)]
    model: String,
    #[arg(long, env = contract::ENV_TEACHER_FAMILY, value_enum, default_value = "yolo")]
    family: FamilyArg,
    /// Name in the API (default: the file name without extension).
    #[arg(long)]
    model_name: Option<String>,
    #[arg(long, default_value = "1")]
    model_version: String,
    /// For an `s3://` model: the S3-compatible service (credentials from `AWS_*`).
    #[arg(long, env = contract::ENV_S3_ENDPOINT)]
    s3_endpoint: Option<String>,
    #[arg(long, env = contract::ENV_S3_REGION)]
    s3_region: Option<String>,
    /// ONNX Runtime's shared library (libonnxruntime.so.<version>).
    #[arg(long, env = contract::ENV_ONNXRUNTIME)]
    onnxruntime: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// A batch takes no further image once its expected inference time (learnt per image)
    /// would pass this: what a request arriving meanwhile waits for it at most, about.
    #[arg(long, default_value_t = 50)]
    max_batch_ms: u64,
    /// Requests that may wait for the model; beyond, 429.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Requests admitted at once (beyond, 429 before the body is read).
    #[arg(long, default_value_t = 40)]
    max_in_flight: usize,
    /// Logs as JSON lines (for a cluster's log pipeline) instead of text.
    #[arg(long, env = contract::ENV_LOG_JSON)]
    log_json: bool,
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Most pixels in one request, all its images together.
    #[arg(long, default_value_t = 3840 * 2160)]
    max_pixels: u64,
    /// A file holding the bearer token clients must send (a mounted Secret); unset: no auth.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM, the chain; a mounted `kubernetes.io/tls`
    /// Secret's `tls.crt`), reloaded when it changes. Needs --tls-key-file.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM; the Secret's `tls.key`).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Also serve the probes and `/metrics` (not the API) over plain HTTP here: beside an HTTPS
    /// API, for the kubelet and Prometheus.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, default_value_t = 0.25)]
    min_score: f32,
    #[arg(long, default_value_t = 0.5)]
    iou: f32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    autotuner_api::logging::init(args.log_json, "info");
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    if args.token_file.is_some() && token.is_none() {
        anyhow::bail!("the token file is empty");
    }
    let runtime = Runtime::load(&args.onnxruntime)?;
    let family = match args.family {
        FamilyArg::Yolo => Family::Yolo,
        FamilyArg::SsdRaw => Family::SsdRaw,
        FamilyArg::TfObjectDetection => Family::SsdPostprocessed,
    };
    let preference = match args.device {
        DeviceArg::Auto => DevicePreference::Auto,
        DeviceArg::Cpu => DevicePreference::Cpu,
    };
    // file://, http(s):// or s3:// (credentials from the AWS_* variables), downloads to the
    // pod's writable /tmp.
    let s3 = autotuner_store::S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
    };
    let model_path = autotuner_store::fetch_model(&args.model, None, &s3, &std::env::temp_dir()).await?;
    let detector = Detector::load(&runtime, &model_path, family, preference)?;
    let name = args.model_name.clone().unwrap_or_else(|| {
        let file = args
            .model
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        std::path::Path::new(file)
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let model = ModelInfo {
        name,
        version: args.model_version.clone(),
        device: detector.device().as_str().into(),
    };
    if let (DeviceArg::Auto, Some(reason)) = (args.device, detector.cuda_unavailable()) {
        tracing::info!(%reason, "CUDA is not usable here: running on the CPU");
    }
    tracing::info!(model = %model.name, device = %model.device, family = ?family, "model loaded");
    let metrics = Metrics::new();
    let batch = BatchConfig {
        max_batch: args.max_batch.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_batch_time: Duration::from_millis(args.max_batch_ms),
        queue: args.queue.max(1),
    };
    let (batcher, worker) = Batcher::start(detector, batch, metrics.clone());
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        max_pixels: args.max_pixels,
        max_in_flight: args.max_in_flight.max(1),
        token,
        default_min_score: args.min_score,
        iou_threshold: args.iou,
        ..ServerConfig::new(model)
    };
    let (app, observability) = routers(config, batcher, metrics);
    if let Some(address) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tracing::info!(listen = %address, "serving the probes and /metrics over HTTP");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, observability).await {
                tracing::error!(error = %e, "the probes' and metrics' server stopped");
            }
        });
    }
    let listener =
        std::net::TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            tracing::info!(listen = %args.listen, "serving HTTPS");
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                reload_every: Duration::from_secs(30),
            };
            tls::serve(listener, app, files, shutdown()).await?;
        }
        _ => {
            tracing::info!(listen = %args.listen, "serving HTTP");
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // The peer's address is the caller of a request without an `Autotuner-Caller` header.
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown())
                .await?;
        }
    }
    // The router (and with it the batcher's last sender) is gone: the worker drains and stops.
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C: stop accepting, finish what is in flight.
async fn shutdown() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
