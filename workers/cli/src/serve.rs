//! `autotuner serve`: a student on a video or a stream, with the capture pod's outputs
//! (Prometheus metrics, the latest detections as JSON, Server-Sent Events, MQTT), for a user
//! without a cluster. The same edge code as the capture worker: one decode, drop-oldest
//! hand-over on a live stream, every frame of a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use autotuner_capture::edge::{Edge, EdgeSettings, Loaded, ModelId, ModelLoader};
use autotuner_capture::metrics::Metrics;
use autotuner_capture::mqtt::{self, MqttConfig};
use autotuner_capture::source::SourceConfig;
use autotuner_detect::{DevicePreference, Family};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The video or stream (a path, file://, rtsp://, http(s)://).
    #[arg(long)]
    video: String,
    /// The student (a path, file://, http(s):// or s3://); its family is ssdRaw.
    #[arg(long)]
    model: String,
    /// Classes to publish (COCO names), comma-separated.
    #[arg(long, default_value = "person", value_delimiter = ',')]
    classes: Vec<String>,
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// Infer at most this many frames per second (default: all the CPU allows).
    #[arg(long)]
    max_fps: Option<f64>,
    /// HTTP: /metrics, /v1/detections/latest, /v1/detections/stream (SSE), /v1/model.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Publish every frame's detections to this MQTT broker (mqtt://host[:port]).
    #[arg(long)]
    mqtt_url: Option<String>,
    #[arg(long, default_value = "autotuner")]
    mqtt_topic_prefix: String,
    /// Stop after this many frames.
    #[arg(long)]
    max_frames: Option<u64>,
    #[arg(long, env = autotuner_api::contract::ENV_ONNXRUNTIME)]
    onnxruntime: Option<PathBuf>,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<u64> {
    if !(0.0..=1.0).contains(&args.min_score) {
        anyhow::bail!("--min-score must be in [0, 1] (got {})", args.min_score);
    }
    let classes = autotuner_detect::labels::ids(&args.classes)
        .map_err(|name| anyhow::anyhow!("--classes: {name:?} is not a COCO class name"))?;
    let onnxruntime = args
        .onnxruntime
        .clone()
        .unwrap_or_else(|| autotuner_detect::assets::dir().join("libonnxruntime.so"));
    let metrics = Metrics::new();
    let settings = EdgeSettings {
        classes,
        min_score: args.min_score,
        max_fps: args.max_fps,
        device: DevicePreference::Auto,
        ..EdgeSettings::default()
    };
    let edge = Edge::new(settings, metrics.clone());
    let loader = ModelLoader::new(
        edge.clone(),
        Some(&onnxruntime),
        Family::SsdRaw,
        Default::default(),
        std::env::temp_dir().join("autotuner-serve"),
    );
    // The model first: a model that does not load is an error here, not a silent stream.
    let model = ModelId {
        version: 0,
        uri: args.model.clone(),
    };
    if loader.load(model).await != Loaded::Staged {
        let reason = edge.refused().map(|r| r.reason).unwrap_or_default();
        anyhow::bail!("{}: {reason}", args.model);
    }
    let publisher = match &args.mqtt_url {
        Some(url) => Some(
            mqtt::start(
                MqttConfig {
                    url: url.clone(),
                    topic_prefix: args.mqtt_topic_prefix.clone(),
                    username: mqtt::env_username(),
                    password: mqtt::env_password(),
                    qos: 0,
                    client_id: format!("autotuner-serve-{}", std::process::id()),
                },
                &edge,
                metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        None => None,
    };
    let address = autotuner_capture::serve::listen(args.listen, metrics, Some(edge.clone()))
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    eprintln!("serving detections on http://{address}/v1/detections/stream");
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.store(true, Ordering::SeqCst);
        });
    }
    let (source, max_frames, worker) = (
        SourceConfig::new(args.video.clone()),
        args.max_frames,
        edge.clone(),
    );
    let decoded = tokio::task::spawn_blocking(move || {
        autotuner_capture::infer_stream(source, &worker, max_frames, &shutdown)
    })
    .await??;
    if let Some(publisher) = publisher {
        publisher.finish(&edge, Duration::from_secs(5)).await;
    }
    Ok(decoded)
}
