//! The capture worker as the operator runs it: its settings from its CameraTuning's spec (which
//! its Role may read), its progress reported by server-side applying `status.dataset` under its
//! own field manager (which its Role may write, and nothing else).

use autotuner_api::contract;
use autotuner_api::{BackgroundModel, CameraTuning, CameraTuningSpec};
use autotuner_vision::{Background, MotionConfig};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::dataset::Split;
use crate::metrics::Metrics;
use crate::pipeline::CaptureConfig;

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

    pub async fn spec(&self, client: &Client) -> Result<CameraTuningSpec, kube::Error> {
        let api: Api<CameraTuning> = Api::namespaced(client.clone(), &self.namespace);
        Ok(api.get(&self.name).await?.spec)
    }

    /// Server-side applies the dataset counts.
    pub async fn report(&self, client: &Client, metrics: &Metrics) -> Result<(), kube::Error> {
        let api: Api<CameraTuning> = Api::namespaced(client.clone(), &self.namespace);
        let images = |split: Split| metrics.dataset_images.with_label_values(&[split.dir()]).get();
        let body = json!({
            "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
            "status": { "dataset": {
                "framesSeen": metrics.frames("decoded"),
                "framesSelected": metrics.frames("selected"),
                "annotated": metrics.annotated.get(),
                "train": images(Split::Train),
                "eval": images(Split::Eval),
            }},
        });
        api.patch_status(
            &self.name,
            &PatchParams::apply(contract::CAPTURE_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
    }
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
    if !spec.drift.enabled {
        config.sampling.drift_every = None;
    }
    *min_score = spec.annotation.confidence_threshold as f32;
    config.dataset.train_size = spec.dataset.train_size as usize;
    config.dataset.eval_size = spec.dataset.eval_size as usize;
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
        assert_eq!(min_score, spec.annotation.confidence_threshold as f32);
    }
}
