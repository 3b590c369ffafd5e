//! The capture worker as the operator runs it: its settings from its CameraTuning's spec (which
//! its Role may read), its progress reported by server-side applying `status.dataset` under its
//! own field manager (which its Role may write, and nothing else).

use std::sync::Arc;

use autotuner_api::contract;
use autotuner_api::{
    BackgroundModel, CameraTuning, CameraTuningSpec, CameraTuningStatus, DatasetStatus, DetectorFamily,
    DriftCheckStatus, InferenceDevice, InferenceStatus, RefusedModel, RoundImages, ServedModel,
};
use autotuner_detect::{DevicePreference, Family};
use autotuner_vision::{Background, MotionConfig};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::dataset::{Rolling, Split};
use crate::drift::{Checked, DriftChecker, DriftSettings, Scored, Skipped};
use crate::edge::{Edge, EdgeSettings, Loaded, ModelId, ModelLoader};
use crate::metrics::Metrics;
use crate::mqtt::MqttConfig;
use crate::pipeline::CaptureConfig;
use crate::round::RoundCounter;

/// Which CameraTuning this worker serves, from the operator's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterContext {
    pub name: String,
    pub namespace: String,
}

impl ClusterContext {
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let Some(name) = var(contract::ENV_NAME) else {
            return Ok(None);
        };
        let namespace =
            var(contract::ENV_NAMESPACE).ok_or(format!("{} is not set", contract::ENV_NAMESPACE))?;
        Ok(Some(Self { name, namespace }))
    }

    pub async fn tuning(&self, client: &Client) -> Result<CameraTuning, kube::Error> {
        let api: Api<CameraTuning> = Api::namespaced(client.clone(), &self.namespace);
        api.get(&self.name).await
    }

    /// Server-side applies the dataset counts, what the edge serves and the last drift check.
    /// Every report carries every field this worker owns: server-side apply removes a field its
    /// manager stops sending. The answer tells the worker when the round of collection began.
    pub async fn report(&self, client: &Client, reporting: &Reporting) -> Result<(), kube::Error> {
        let api: Api<CameraTuning> = Api::namespaced(client.clone(), &self.namespace);
        let body = json!({
            "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
            "status": reporting.status(),
        });
        let applied = api
            .patch_status(
                &self.name,
                &PatchParams::apply(contract::CAPTURE_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        reporting.round.begin(round_started_at_ms(&applied));
        Ok(())
    }
}

/// `status.dataset.roundStartedAt` in milliseconds since the epoch.
pub fn round_started_at_ms(tuning: &CameraTuning) -> Option<u64> {
    let dataset = tuning.status.as_ref()?.dataset.as_ref()?;
    contract::epoch_ms(dataset.round_started_at.as_ref()?)
}

/// What the worker reports in its CameraTuning's status.
#[derive(Clone, Debug)]
pub struct Reporting {
    pub metrics: Metrics,
    pub edge: Option<Arc<Edge>>,
    pub drift: Arc<DriftRecord>,
    pub round: Arc<RoundCounter>,
}

impl Reporting {
    /// The status fields this worker owns, as they stand.
    pub fn status(&self) -> CameraTuningStatus {
        let metrics = &self.metrics;
        let images = |split: Split| metrics.dataset_images.with_label_values(&[split.dir()]).get();
        let round = self.round.counted().and_then(|c| {
            Some(RoundImages {
                since: contract::time_at_epoch_ms(c.since_ms)?,
                train: c.train,
                eval: c.eval,
            })
        });
        CameraTuningStatus {
            dataset: Some(DatasetStatus {
                frames_seen: Some(metrics.frames("decoded")),
                frames_selected: Some(metrics.frames("selected")),
                annotated: Some(metrics.annotated.get()),
                train: Some(images(Split::Train).max(0) as u64),
                eval: Some(images(Split::Eval).max(0) as u64),
                train_stored: Some(
                    metrics
                        .dataset_stored
                        .with_label_values(&[Split::Train.dir()])
                        .get(),
                ),
                round,
                ..DatasetStatus::default()
            }),
            inference: self.edge.as_deref().map(inference_status),
            last_drift_check: self.drift.last(),
            ..CameraTuningStatus::default()
        }
    }
}

/// The last drift check, kept for every report (and seeded from the status at start, so a
/// restart does not erase it).
#[derive(Debug, Default)]
pub struct DriftRecord {
    last: std::sync::Mutex<Option<DriftCheckStatus>>,
    pub changed: tokio::sync::Notify,
}

impl DriftRecord {
    pub fn new(last: Option<DriftCheckStatus>) -> Self {
        Self {
            last: std::sync::Mutex::new(last),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn last(&self) -> Option<DriftCheckStatus> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, check: DriftCheckStatus) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
        self.changed.notify_one();
    }
}

/// Runs a drift check every `checker.settings.interval` for as long as the process lives.
pub async fn run_drift_checks(
    context: ClusterContext,
    client: Client,
    checker: Arc<DriftChecker>,
    loader: ModelLoader,
    reporting: Reporting,
) {
    let Some(edge) = reporting.edge.clone() else {
        return;
    };
    let metrics = &reporting.metrics;
    loop {
        tokio::time::sleep(checker.settings.interval).await;
        let started = std::time::Instant::now();
        let outcome = drift_check(&context, &client, &checker, &loader, &edge).await;
        metrics
            .drift_check_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Some(checked)) => {
                metrics.drift_checks.with_label_values(&["checked"]).inc();
                metrics.drift_relative_accuracy.set(checked.relative_accuracy);
                metrics
                    .drift_ap50
                    .with_label_values(&["current"])
                    .set(checked.ap50);
                if let Some(previous) = checked.previous_ap50 {
                    metrics.drift_ap50.with_label_values(&["previous"]).set(previous);
                }
                tracing::info!(
                    version = checked.model_version,
                    samples = checked.samples,
                    ap50 = checked.ap50,
                    relative_accuracy = checked.relative_accuracy,
                    previous_ap50 = ?checked.previous_ap50,
                    "drift check"
                );
                reporting.drift.record(drift_check_status(&checked));
            }
            Ok(None) => tracing::debug!("drift check skipped: the promoted model does not serve yet"),
            Err(skipped) => {
                metrics.drift_checks.with_label_values(&[skipped.outcome()]).inc();
                tracing::warn!(reason = %skipped, "drift check skipped");
            }
        }
    }
}

/// The status record of a check.
pub fn drift_check_status(checked: &Checked) -> DriftCheckStatus {
    DriftCheckStatus {
        time: Time(k8s_openapi::jiff::Timestamp::now()),
        relative_accuracy: checked.relative_accuracy.max(0.0),
        sample_size: Some(checked.samples as u32),
        model_version: Some(checked.model_version),
        ap50: Some(checked.ap50.clamp(0.0, 1.0)),
        previous_model_ap50: checked.previous_ap50.map(|v| v.clamp(0.0, 1.0)),
    }
}

/// One check of the promoted model, once the node serves it (`Ok(None)` before that, and before
/// the first promotion: the off-the-shelf student has no promotion figure to compare with).
async fn drift_check(
    context: &ClusterContext,
    client: &Client,
    checker: &Arc<DriftChecker>,
    loader: &ModelLoader,
    edge: &Edge,
) -> Result<Option<Checked>, Skipped> {
    let failed = |e: String| Skipped::Failed(e);
    let tuning = context.tuning(client).await.map_err(|e| failed(e.to_string()))?;
    let status = tuning.status.unwrap_or_default();
    let (Some(current), Some((served, _))) = (status.current_model, edge.serving()) else {
        return Ok(None);
    };
    if served.version != current.version || served.uri != current.uri {
        return Ok(None);
    }
    let current = Scored {
        version: current.version,
        path: loader.fetch(&current.uri).await.map_err(failed)?,
        reference_ap50: current.map50,
    };
    let previous = match status.previous_model {
        Some(previous) if checker.on_probation(current.version) => Some(Scored {
            version: previous.version,
            path: loader.fetch(&previous.uri).await.map_err(failed)?,
            reference_ap50: previous.map50,
        }),
        _ => None,
    };
    let checker = checker.clone();
    tokio::task::spawn_blocking(move || checker.check(&current, previous.as_ref()))
        .await
        .map_err(|e| failed(format!("the drift check panicked: {e}")))?
        .map(Some)
}

/// The `status.inference` the edge's state amounts to.
pub fn inference_status(edge: &Edge) -> InferenceStatus {
    let time = |t: std::time::SystemTime| Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default());
    InferenceStatus {
        model: edge.serving().map(|(id, since)| ServedModel {
            version: id.version,
            uri: id.uri,
            since: time(since),
        }),
        refused_model: edge.refused().map(|r| RefusedModel {
            version: r.id.version,
            uri: r.id.uri,
            reason: r.reason.chars().take(1000).collect(),
            time: time(r.at),
            retrying: Some(r.retrying),
        }),
    }
}

/// The model the camera's node should serve: the deployed one, or the off-the-shelf student
/// before the first promotion.
pub fn desired_model(tuning: &CameraTuning) -> ModelId {
    match tuning.status.as_ref().and_then(|s| s.current_model.as_ref()) {
        Some(model) => ModelId {
            version: model.version,
            uri: model.uri.clone(),
        },
        None => ModelId {
            version: 0,
            uri: tuning.spec.training.student.uri.clone(),
        },
    }
}

/// Watches the CameraTuning and has `loader` fetch, check and stage every model it should serve.
/// A model that does not load is not tried again until the status names another; one that could
/// not be fetched is tried again every 30 s. Runs until the process ends; the watch reconnects
/// by itself.
pub async fn follow_models(context: ClusterContext, client: Client, loader: ModelLoader) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(30);
    let api: Api<CameraTuning> = Api::namespaced(client, &context.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", context.name));
    let mut tunings = watcher(api, config).default_backoff().applied_objects().boxed();
    let mut requested: Option<ModelId> = None;
    // A model that could not be fetched, and when to try it again (a deadline, not a sleep:
    // the worker's own status reports wake the watch every few seconds).
    let mut unreachable: Option<(ModelId, tokio::time::Instant)> = None;
    loop {
        let retry_at = unreachable.as_ref().map(|(_, at)| *at);
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let wanted = tokio::select! {
            event = tunings.next() => match event {
                Some(Ok(tuning)) => desired_model(&tuning),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the CameraTuning; retrying");
                    continue;
                }
                None => return,
            },
            _ = retry => match unreachable.take() {
                Some((id, _)) => {
                    requested = None;
                    id
                }
                None => continue,
            },
        };
        if requested.as_ref() == Some(&wanted) {
            continue;
        }
        tracing::info!(version = wanted.version, "loading the model to serve");
        requested = Some(wanted.clone());
        unreachable = (loader.load(wanted.clone()).await == Loaded::Unreachable)
            .then(|| (wanted, tokio::time::Instant::now() + RETRY));
    }
}

/// The family of the models the node serves, when `inference.enabled`: the trainer fine-tunes
/// (and so exports) the spec's student's family.
pub fn served_family(spec: &CameraTuningSpec) -> Option<Family> {
    spec.inference
        .enabled
        .then_some(match spec.training.student.family {
            DetectorFamily::Yolo => Family::Yolo,
            DetectorFamily::SsdRaw => Family::SsdRaw,
            DetectorFamily::TfObjectDetection => Family::SsdPostprocessed,
        })
}

/// The edge's settings from the spec.
pub fn edge_settings(spec: &CameraTuningSpec, base: &EdgeSettings) -> Result<EdgeSettings, String> {
    // The schema's minimum (0.1) is the API server's check; an integer 0 has been seen to pass it.
    if let Some(fps) = spec.inference.max_frames_per_second
        && !(fps.is_finite() && fps > 0.0)
    {
        return Err(format!(
            "inference.maxFramesPerSecond must be positive (got {fps}); leave it out to infer every frame"
        ));
    }
    Ok(EdgeSettings {
        classes: autotuner_detect::labels::ids(&spec.classes)
            .map_err(|name| format!("class {name:?} is not a COCO class name the student knows"))?,
        min_score: spec.inference.min_score as f32,
        max_fps: spec.inference.max_frames_per_second,
        device: match spec.inference.device {
            InferenceDevice::Auto => DevicePreference::Auto,
            InferenceDevice::Cpu => DevicePreference::Cpu,
        },
        ..base.clone()
    })
}

/// The MQTT publisher's settings from the spec (credentials from the contract's variables).
pub fn mqtt_config(spec: &CameraTuningSpec, context: &ClusterContext) -> Option<MqttConfig> {
    let mqtt = spec.inference.mqtt.as_ref()?;
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    Some(MqttConfig {
        url: mqtt.url.clone(),
        topic_prefix: mqtt
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("autotuner/{}/{}", context.namespace, context.name)),
        username: var(contract::ENV_MQTT_USERNAME),
        password: var(contract::ENV_MQTT_PASSWORD),
        qos: mqtt.qos,
        client_id: format!("autotuner-{}-{}", context.namespace, context.name),
    })
}

/// Keeps the worker's status fields current: every 10 s, and at once when the served or refused
/// model changes or a drift check ends.
pub fn spawn_reporter(
    context: ClusterContext,
    client: Client,
    reporting: Reporting,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let edge_changed = async {
                match &reporting.edge {
                    Some(edge) => edge.state_changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                _ = edge_changed => {}
                _ = reporting.drift.changed.notified() => {}
            }
            if let Err(e) = context.report(&client, &reporting).await {
                tracing::warn!(error = %e, "could not report the status");
            }
        }
    })
}

/// In a cluster with drift checks on, every this many selected frames one is a drift sample
/// (labelled, never trained on) unless `--drift-every` says otherwise.
pub const DRIFT_EVERY: u32 = 10;

/// The drift check's settings from the spec; `None` when drift checks are off.
pub fn drift_settings(spec: &CameraTuningSpec) -> Result<Option<DriftSettings>, String> {
    if !spec.drift.enabled {
        return Ok(None);
    }
    let interval = autotuner_api::duration::parse(&spec.drift.check_interval).ok_or_else(|| {
        format!(
            "drift.checkInterval {:?} is not a duration such as 1h",
            spec.drift.check_interval
        )
    })?;
    Ok(Some(DriftSettings {
        interval,
        sample_size: spec.drift.sample_size.max(1) as usize,
        probation_checks: spec.rollout.probation_checks,
    }))
}

/// The spec's settings onto the worker's (pure; the stream URL, classes, motion, sampling,
/// labelling threshold and split sizes come from the CameraTuning).
pub fn apply_spec(spec: &CameraTuningSpec, config: &mut CaptureConfig, min_score: &mut f32) {
    config.source.url = spec.camera.url.clone();
    config.classes = spec.classes.clone();
    let m = &spec.motion;
    config.motion = MotionConfig {
        background: match m.background {
            BackgroundModel::Median => Background::Median {
                frames: m.median_frames,
                skip: m.median_frame_skip,
                history: m.background_history,
            },
            BackgroundModel::FirstFrame => Background::FirstFrame,
        },
        reset_changed_fraction: m.reset_changed_fraction as f32,
        blur_kernel: m.blur_kernel,
        threshold: m.threshold.min(255) as u8,
        dilate_iterations: m.dilate_iterations,
        min_region_area: m.min_region_area,
        processing_width: m.processing_width,
        masks: m.masks.iter().map(|p| p.points.clone()).collect(),
        ..config.motion.clone()
    };
    config.sampling.frame_step = spec.sampling.frame_skip.max(1);
    config.sampling.uploads_per_minute = Some(spec.sampling.max_uploads_per_minute as f64);
    // Drift samples only when something checks them.
    config.sampling.drift_every = spec
        .drift
        .enabled
        .then(|| config.sampling.drift_every.unwrap_or(DRIFT_EVERY));
    config.crop_to_motion = spec.annotation.crop_to_motion;
    config.background_reset_after = autotuner_api::duration::parse(&spec.motion.background_reset_interval);
    *min_score = spec.annotation.confidence_threshold as f32;
    config.dataset.train_size = spec.dataset.train_size as usize;
    config.dataset.eval_size = spec.dataset.eval_size as usize;
    // The loop runs again after drift on what the camera sees then, so the dataset rolls: the
    // latest images of each split, the drift split only as deep as a check reads.
    config.dataset.rolling = Some(Rolling {
        train: spec.drift.max_dataset_size as usize,
        eval: spec.dataset.eval_size as usize,
        drift: spec.drift.sample_size.max(1) as usize,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_spec_sets_the_stream_classes_motion_budget_and_sizes() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../manifests/examples/full.yaml"
        ))
        .unwrap();
        let tuning: CameraTuning = serde_yaml_ng::from_str(&text).unwrap();
        let mut config = CaptureConfig::new("/v.avi", "/data".into());
        let mut min_score = 0.0;
        apply_spec(&tuning.spec, &mut config, &mut min_score);
        let spec = &tuning.spec;
        assert_eq!(config.source.url, spec.camera.url);
        assert_eq!(config.classes, spec.classes);
        assert_eq!(config.motion.threshold as u32, spec.motion.threshold);
        assert_eq!(config.motion.min_region_area, spec.motion.min_region_area);
        assert_eq!(config.sampling.frame_step, spec.sampling.frame_skip);
        assert_eq!(
            config.sampling.uploads_per_minute,
            Some(spec.sampling.max_uploads_per_minute as f64)
        );
        assert_eq!(config.dataset.train_size, spec.dataset.train_size as usize);
        let rolling = config.dataset.rolling.unwrap();
        assert_eq!(rolling.train, spec.drift.max_dataset_size as usize);
        assert_eq!(rolling.eval, spec.dataset.eval_size as usize);
        assert_eq!(rolling.drift, spec.drift.sample_size as usize);
        assert_eq!(min_score, spec.annotation.confidence_threshold as f32);

        // spec.inference: what the student on the node publishes, and where.
        let edge = edge_settings(spec, &EdgeSettings::default()).unwrap();
        assert_eq!(edge.classes, [1, 3, 2], "person, car, bicycle");
        assert_eq!(edge.min_score, 0.4);
        assert_eq!(edge.max_fps, Some(12.5));
        assert_eq!(edge.device, DevicePreference::Cpu);
        let mut stopped = spec.clone();
        stopped.inference.max_frames_per_second = Some(0.0);
        assert!(
            edge_settings(&stopped, &EdgeSettings::default())
                .unwrap_err()
                .contains("must be positive")
        );
        let context = ClusterContext {
            name: "parking-lot-east".into(),
            namespace: "depot-3".into(),
        };
        let mqtt = mqtt_config(spec, &context).unwrap();
        assert_eq!(mqtt.broker(), Ok(("mosquitto.iot.svc".into(), 1883)));
        assert_eq!(mqtt.topic(), "depot-3/parking-lot-east/detections");
        assert_eq!(mqtt.qos, 1);
        let mut unnamed = spec.clone();
        unnamed.inference.mqtt.as_mut().unwrap().topic_prefix = None;
        assert_eq!(
            mqtt_config(&unnamed, &context).unwrap().topic(),
            "autotuner/depot-3/parking-lot-east/detections"
        );
    }

    #[test]
    fn the_node_serves_the_promoted_model_or_else_the_off_the_shelf_student() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../manifests/examples/minimal.yaml"
        ))
        .unwrap();
        let mut tuning: CameraTuning = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            desired_model(&tuning),
            ModelId {
                version: 0,
                uri: tuning.spec.training.student.uri.clone()
            }
        );
        tuning.status = Some(
            serde_json::from_value(
                json!({ "currentModel": { "version": 3, "uri": "s3://m/3.onnx", "map": 0.4 } }),
            )
            .unwrap(),
        );
        assert_eq!(
            desired_model(&tuning),
            ModelId {
                version: 3,
                uri: "s3://m/3.onnx".into()
            }
        );
    }
}
