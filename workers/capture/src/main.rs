//! `capture`: the camera node's worker. Run by the operator it reads its settings from its
//! CameraTuning and the few environment variables of `operator/api`'s contract; run alone, from
//! its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use autotuner_annotator::client::{Client, RetryPolicy};
use autotuner_api::contract;
use autotuner_capture::cluster::{self, ClusterContext, DriftRecord, Reporting};
use autotuner_capture::dataset::{DatasetConfig, Rolling};
use autotuner_capture::drift::{DriftChecker, DriftSettings};
use autotuner_capture::edge::{Edge, EdgeSettings, ModelId, ModelLoader};
use autotuner_capture::metrics::Metrics;
use autotuner_capture::mqtt::{self, MqttConfig};
use autotuner_capture::round::RoundCounter;
use autotuner_capture::select::Sampling;
use autotuner_capture::source::{Credentials, RtspTransport, SourceConfig};
use autotuner_capture::teacher::Teacher;
use autotuner_capture::{CaptureConfig, run, serve};
use autotuner_detect::{DevicePreference, Family};
use autotuner_store::{Location, S3Options};
use autotuner_vision::MotionConfig;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "capture",
    about = "Decode a camera stream, select what moved, have the teacher label it, write the dataset"
)]
struct Args {
    /// The stream: a path, file://, rtsp://, http(s):// (MJPEG, HLS, progressive file). Run by
    /// the operator, the CameraTuning's spec sets this and the motion, sampling, class and
    /// dataset settings below.
    #[arg(long, default_value = "")]
    url: String,
    #[arg(long, default_value = "tcp")]
    rtsp_transport: RtspTransport,
    /// The stream's user name (the operator sets it from the credentials Secret).
    #[arg(long, env = contract::ENV_CAMERA_USERNAME, hide_env_values = true)]
    camera_username: Option<String>,
    #[arg(long, env = contract::ENV_CAMERA_PASSWORD, hide_env_values = true)]
    camera_password: Option<String>,
    /// A file holding `user:password` (a mounted Secret), instead of the two variables.
    #[arg(long)]
    camera_credentials_file: Option<PathBuf>,
    /// The annotator's base URL.
    #[arg(long, env = contract::ENV_ANNOTATOR_URL)]
    annotator_url: String,
    #[arg(long, env = contract::ENV_ANNOTATOR_TOKEN, hide_env_values = true)]
    annotator_token: Option<String>,
    /// For an `https://` annotator: its CA certificate(s) in PEM, trusted instead of the
    /// system's roots (in a cluster, from the Secret the spec names).
    #[arg(long, env = contract::ENV_ANNOTATOR_CA, conflicts_with = "annotator_ca_file")]
    annotator_ca: Option<String>,
    /// The same, from a file.
    #[arg(long)]
    annotator_ca_file: Option<PathBuf>,
    /// Target classes (COCO names), comma-separated.
    #[arg(long, default_value = "person", value_delimiter = ',')]
    classes: Vec<String>,
    /// The teacher's confidence threshold for a label.
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// The dataset: a directory (the operator's dataset volume) or `s3://bucket/prefix`
    /// (credentials from the standard `AWS_*` variables).
    #[arg(long, env = contract::ENV_DATASET_URI, default_value = "/data")]
    dataset: String,
    #[arg(long, env = contract::ENV_S3_ENDPOINT)]
    s3_endpoint: Option<String>,
    #[arg(long, env = contract::ENV_S3_REGION)]
    s3_region: Option<String>,
    /// The working copy of a dataset in object storage (and its spool).
    #[arg(long, env = contract::ENV_WORK_DIR)]
    work_dir: Option<PathBuf>,
    /// The spool's directory (default: `<dataset>/spool`).
    #[arg(long, env = contract::ENV_SPOOL_DIR)]
    spool: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    spool_max_entries: usize,
    #[arg(long, default_value_t = 2048)]
    spool_max_mib: u64,
    #[arg(long, default_value_t = 1000)]
    train_size: usize,
    #[arg(long, default_value_t = 200)]
    eval_size: usize,
    /// Keep the latest --train-size and --eval-size samples (and the latest N drift samples),
    /// each new one replacing the oldest, as in a cluster; without it a split stops when full.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rolling_drift_samples: Option<u32>,
    /// Seconds of stream per split block (eval blocks are whole blocks).
    #[arg(long, default_value_t = 20.0)]
    split_block_seconds: f64,
    /// Run motion detection on every n-th frame (1: all).
    #[arg(long, default_value_t = 1)]
    frame_step: u32,
    #[arg(long)]
    uploads_per_minute: Option<f64>,
    /// Every k-th selected frame is a drift sample (kept out of training).
    #[arg(long)]
    drift_every: Option<u32>,
    #[arg(long, default_value_t = 25)]
    threshold: u8,
    #[arg(long, default_value_t = 500)]
    min_region_area: u32,
    #[arg(long)]
    processing_width: Option<u32>,
    #[arg(long, default_value_t = 90)]
    jpeg_quality: u8,
    /// Stop after this many frames (smoke runs).
    #[arg(long)]
    max_frames: Option<u64>,
    /// Where the HTTP server listens: /metrics, the detections (/v1/detections/latest, and
    /// /v1/detections/stream as Server-Sent Events), /v1/model, /healthz, /readyz.
    #[arg(long, alias = "listen", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The student to serve on the frames (file://, http(s):// or s3://). In a cluster the
    /// CameraTuning names it (the deployed model, swapped in as it changes) and this is unused.
    #[arg(long)]
    model: Option<String>,
    /// How to read the model's outputs: ssdRaw, yolo or tfObjectDetection.
    #[arg(long, default_value = "ssdRaw", value_parser = str::parse::<Family>)]
    model_family: Family,
    /// ONNX Runtime's shared library (libonnxruntime.so.<version>), for the student.
    #[arg(long, env = contract::ENV_ONNXRUNTIME)]
    onnxruntime: Option<PathBuf>,
    /// The student's detections below this score are not published.
    #[arg(long, default_value_t = 0.5)]
    inference_min_score: f32,
    /// Infer at most this many frames per second (default: every frame the CPU allows).
    #[arg(long)]
    inference_max_fps: Option<f64>,
    /// ONNX Runtime threads for the student (0: one per core).
    #[arg(long, default_value_t = 0)]
    inference_threads: usize,
    /// Run the student on the CPU even where CUDA is available.
    #[arg(long)]
    cpu: bool,
    /// Publish the detections to this MQTT broker (mqtt://host[:port]).
    #[arg(long)]
    mqtt_url: Option<String>,
    #[arg(long, default_value = "autotuner")]
    mqtt_topic_prefix: String,
    #[arg(long, env = contract::ENV_MQTT_USERNAME, hide_env_values = true)]
    mqtt_username: Option<String>,
    #[arg(long, env = contract::ENV_MQTT_PASSWORD, hide_env_values = true)]
    mqtt_password: Option<String>,
    #[arg(long, default_value_t = 0)]
    mqtt_qos: u8,
    #[arg(long, env = contract::ENV_LOG_JSON)]
    log_json: bool,
}

/// The edge's settings from the flags (a cluster's spec overrides them).
fn edge_settings(args: &Args) -> Result<EdgeSettings, String> {
    if !(0.0..=1.0).contains(&args.inference_min_score) {
        return Err(format!(
            "--inference-min-score must be in [0, 1] (got {})",
            args.inference_min_score
        ));
    }
    if args
        .inference_max_fps
        .is_some_and(|f| !(f > 0.0 && f.is_finite()))
    {
        return Err("--inference-max-fps must be a positive number".into());
    }
    Ok(EdgeSettings {
        classes: autotuner_detect::labels::ids(&args.classes)
            .map_err(|name| format!("--classes: {name:?} is not a COCO class name"))?,
        min_score: args.inference_min_score,
        max_fps: args.inference_max_fps,
        device: if args.cpu {
            DevicePreference::Cpu
        } else {
            DevicePreference::Auto
        },
        threads: args.inference_threads,
        ..EdgeSettings::default()
    })
}

fn mqtt_from_args(args: &Args) -> Option<MqttConfig> {
    args.mqtt_url.as_ref().map(|url| MqttConfig {
        url: url.clone(),
        topic_prefix: args.mqtt_topic_prefix.clone(),
        username: args.mqtt_username.clone(),
        password: args.mqtt_password.clone(),
        qos: args.mqtt_qos,
        client_id: format!("autotuner-capture-{}", std::process::id()),
    })
}

/// The annotator's client: its URL and token, the issuer it trusts for HTTPS, and in a cluster
/// the camera it labels for (the caller the annotator shares itself fairly between).
fn annotator_client(args: &Args) -> Result<Client, String> {
    let client = Client::new(
        &args.annotator_url,
        args.annotator_token.clone(),
        Duration::from_secs(30),
        RetryPolicy::default(),
    )
    .map_err(|e| e.to_string())?;
    let client = match (
        std::env::var(contract::ENV_NAMESPACE),
        std::env::var(contract::ENV_NAME),
    ) {
        (Ok(namespace), Ok(name)) => client.with_caller(format!("{namespace}/{name}")),
        _ => client,
    };
    let ca = match (&args.annotator_ca, &args.annotator_ca_file) {
        (Some(pem), _) => pem.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("read the annotator's CA certificate {}: {e}", path.display()))?,
        (None, None) => return Ok(client),
    };
    client.with_ca_pem(&ca).map_err(|e| e.to_string())
}

fn credentials(args: &Args) -> Result<Option<Credentials>, String> {
    if let Some(path) = &args.camera_credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let (username, password) = text
            .trim_end()
            .split_once(':')
            .ok_or_else(|| format!("{} must hold user:password", path.display()))?;
        return Ok(Some(Credentials {
            username: username.into(),
            password: password.into(),
        }));
    }
    Ok(args.camera_username.as_ref().map(|username| Credentials {
        username: username.clone(),
        password: args.camera_password.clone().unwrap_or_default(),
    }))
}

/// What the worker learned from its CameraTuning when it started.
struct InCluster {
    context: ClusterContext,
    client: kube::Client,
    /// The student's family when the spec enables inference.
    inference: Option<Family>,
    drift: Option<DriftSettings>,
    last_check: Option<autotuner_api::DriftCheckStatus>,
    round: Arc<RoundCounter>,
}

/// The periodic drift check, when the spec enables it and ONNX Runtime loads.
fn spawn_drift_checks(
    cluster: &InCluster,
    loader: &ModelLoader,
    config: &CaptureConfig,
    reporting: &Reporting,
) {
    let Some(settings) = cluster.drift.clone() else {
        return;
    };
    let runtime = match loader.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "no drift checks: the student cannot run here");
            return;
        }
    };
    let checker = DriftChecker::new(settings, runtime, loader.family(), config.dataset_dir.clone());
    tokio::spawn(cluster::run_drift_checks(
        cluster.context.clone(),
        cluster.client.clone(),
        Arc::new(checker),
        loader.clone(),
        reporting.clone(),
    ));
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    autotuner_api::logging::init(args.log_json, "info");
    // Settings the annotator or the encoder would refuse frame after frame: refused here, once.
    if !(0.0..=1.0).contains(&args.min_score) || !(1..=100).contains(&args.jpeg_quality) {
        eprintln!(
            "capture: --min-score must be in [0, 1] and --jpeg-quality in 1..=100 (got {} and {})",
            args.min_score, args.jpeg_quality
        );
        return ExitCode::from(2);
    }
    let credentials = match credentials(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("capture: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match annotator_client(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("capture: {e}");
            return ExitCode::from(2);
        }
    };
    let (dataset_dir, remote) = if args.dataset.starts_with("s3://") {
        let options = S3Options {
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
        };
        if args.work_dir.is_none() && args.spool.is_none() {
            tracing::warn!(
                "dataset in object storage with the spool in the temporary folder: frames not yet labelled are lost \
                 with the pod; set --spool (or --work-dir) to a persistent volume"
            );
        }
        match Location::parse(&args.dataset, &options) {
            Ok(location) => (
                args.work_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("autotuner-capture"))
                    .join("dataset"),
                Some(location),
            ),
            Err(e) => {
                eprintln!("capture: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        (
            PathBuf::from(args.dataset.strip_prefix("file://").unwrap_or(&args.dataset)),
            None,
        )
    };
    let mut source = SourceConfig::new(args.url.clone());
    source.rtsp_transport = args.rtsp_transport;
    source.credentials = credentials;
    let mut config = CaptureConfig {
        source,
        motion: MotionConfig {
            threshold: args.threshold,
            min_region_area: args.min_region_area,
            processing_width: args.processing_width,
            ..MotionConfig::default()
        },
        sampling: Sampling {
            frame_step: args.frame_step,
            uploads_per_minute: args.uploads_per_minute,
            drift_every: args.drift_every,
            ..Sampling::default()
        },
        dataset: DatasetConfig {
            train_size: args.train_size,
            eval_size: args.eval_size,
            block_ms: (args.split_block_seconds * 1000.0) as i64,
            rolling: args.rolling_drift_samples.map(|drift| Rolling {
                train: args.train_size,
                eval: args.eval_size,
                drift: drift as usize,
            }),
        },
        spool_dir: args.spool.clone().unwrap_or_else(|| dataset_dir.join("spool")),
        dataset_dir,
        remote,
        spool_max_entries: args.spool_max_entries,
        spool_max_bytes: args.spool_max_mib << 20,
        classes: args.classes.clone(),
        jpeg_quality: args.jpeg_quality,
        max_frames: args.max_frames,
        ..CaptureConfig::new(&args.url, PathBuf::new())
    };
    let mut min_score = args.min_score;
    let metrics = Metrics::new();
    let mut settings = match edge_settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("capture: {e}");
            return ExitCode::from(2);
        }
    };
    let mut mqtt = mqtt_from_args(&args);
    let s3 = S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
    };
    let model_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("autotuner-capture"))
        .join("models");
    // In a cluster: the CameraTuning's spec, the model it deploys, and a status report.
    let cluster = match ClusterContext::from_env() {
        Ok(Some(context)) => {
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("capture: no Kubernetes client: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let tuning = match context.tuning(&client).await {
                Ok(tuning) => tuning,
                Err(e) => {
                    eprintln!(
                        "capture: read CameraTuning {}/{}: {e}",
                        context.namespace, context.name
                    );
                    return ExitCode::FAILURE;
                }
            };
            let spec = &tuning.spec;
            cluster::apply_spec(spec, &mut config, &mut min_score);
            settings = match cluster::edge_settings(spec, &settings) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("capture: {e}");
                    return ExitCode::from(2);
                }
            };
            mqtt = cluster::mqtt_config(spec, &context);
            let inference = cluster::served_family(spec);
            let drift = match cluster::drift_settings(spec) {
                Ok(drift) => drift,
                Err(e) => {
                    eprintln!("capture: {e}");
                    return ExitCode::from(2);
                }
            };
            let last_check = tuning.status.as_ref().and_then(|s| s.last_drift_check.clone());
            // The round under way when the worker (re)starts; each status report updates it.
            let round = Arc::new(RoundCounter::default());
            round.begin(cluster::round_started_at_ms(&tuning));
            Some(InCluster {
                context,
                client,
                inference,
                drift,
                last_check,
                round,
            })
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("capture: {e}");
            return ExitCode::from(2);
        }
    };
    // The student on the node: in a cluster when the spec enables it, else with --model.
    let family = match &cluster {
        Some(cluster) => cluster.inference,
        None => args.model.as_ref().map(|_| args.model_family),
    };
    let edge = family.map(|family| {
        let edge = Edge::new(settings.clone(), metrics.clone());
        let loader = ModelLoader::new(
            edge.clone(),
            args.onnxruntime.as_deref(),
            family,
            s3.clone(),
            model_dir.clone(),
        );
        (edge, loader)
    });
    let publisher = match (&edge, mqtt) {
        (Some((edge, _)), Some(mqtt)) => match mqtt::start(mqtt, edge, metrics.clone()) {
            Ok(publisher) => Some(publisher),
            Err(e) => {
                eprintln!("capture: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    config.edge = edge.as_ref().map(|(edge, _)| edge.clone());
    config.round = cluster.as_ref().map(|c| c.round.clone());
    let reporter = match (&cluster, &edge) {
        (Some(cluster), edge) => {
            let reporting = Reporting {
                metrics: metrics.clone(),
                edge: config.edge.clone(),
                drift: Arc::new(DriftRecord::new(cluster.last_check.clone())),
                round: cluster.round.clone(),
            };
            if let Some((_, loader)) = edge {
                tokio::spawn(cluster::follow_models(
                    cluster.context.clone(),
                    cluster.client.clone(),
                    loader.clone(),
                ));
                spawn_drift_checks(cluster, loader, &config, &reporting);
            }
            Some((
                cluster::spawn_reporter(cluster.context.clone(), cluster.client.clone(), reporting.clone()),
                reporting,
            ))
        }
        (None, Some((_, loader))) => {
            let (loader, uri) = (loader.clone(), args.model.clone().unwrap_or_default());
            tokio::spawn(async move { loader.load(ModelId { version: 0, uri }).await });
            None
        }
        (None, None) => None,
    };
    if config.source.url.is_empty() {
        eprintln!("capture: --url is needed outside a cluster");
        return ExitCode::from(2);
    }
    let teacher = Teacher::Http {
        client,
        classes: config.classes.clone(),
        min_score,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down: storing the batch in hand, the rest stays spooled");
            shutdown.store(true, Ordering::SeqCst);
        });
    }
    match serve::listen(args.metrics_listen, metrics.clone(), config.edge.clone()).await {
        Ok(address) => tracing::info!(%address, "serving metrics and detections"),
        Err(e) => {
            eprintln!("capture: listen on {}: {e}", args.metrics_listen);
            return ExitCode::from(2);
        }
    }
    let result = run(config, teacher, metrics.clone(), shutdown).await;
    if let (Some(publisher), Some((edge, _))) = (publisher, &edge) {
        publisher.finish(edge, Duration::from_secs(5)).await;
    }
    if let (Some(cluster), Some((reporter, reporting))) = (cluster, reporter) {
        reporter.abort();
        if let Err(e) = cluster.context.report(&cluster.client, &reporting).await {
            tracing::warn!(error = %e, "could not report the final status");
        }
    }
    match result {
        Ok(summary) => {
            tracing::info!(?summary, "capture finished");
            println!("{}", serde_json::to_string(&summary).expect("summary serialises"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capture: {e:#}");
            ExitCode::FAILURE
        }
    }
}
