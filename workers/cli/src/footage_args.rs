//! Arguments the commands share: the model to run, and the ground truth to score against.

use std::path::PathBuf;

use anyhow::Context;
use autotuner_detect::truth::{self, Truth, TruthFormat, TruthOptions};
use autotuner_detect::{Detector, DevicePreference, Family, Runtime};

use crate::footage::Probe;

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The detector (ONNX). Default: the off-the-shelf student from the assets step (or the
    /// tuned one: autotuner-tune/training/model.onnx after `autotuner tune`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Its output layout: ssdRaw (the student, raw SSD head), yolo (Ultralytics v8-v12),
    /// tfObjectDetection (an SSD with TF's post-processing in the graph).
    #[arg(long, default_value = "ssdRaw", value_parser = str::parse::<Family>)]
    pub family: Family,
    /// ONNX Runtime's library. Default: from the assets step.
    #[arg(long, env = autotuner_api::contract::ENV_ONNXRUNTIME)]
    pub onnxruntime: Option<PathBuf>,
}

impl ModelArgs {
    pub fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            autotuner_detect::assets::dir().join(match self.family {
                Family::Yolo => "models/yolov12n.onnx",
                Family::SsdPostprocessed => "models/ssd_mobilenet_v2_coco_post.onnx",
                Family::SsdRaw => "models/ssd_mobilenet_v2_coco_raw.onnx",
            })
        })
    }

    pub fn runtime(&self) -> anyhow::Result<Runtime> {
        let library = self
            .onnxruntime
            .clone()
            .unwrap_or_else(|| autotuner_detect::assets::dir().join("libonnxruntime.so"));
        Runtime::load(&library).with_context(|| format!("load ONNX Runtime from {}", library.display()))
    }

    pub fn load(&self, runtime: &Runtime) -> anyhow::Result<Detector> {
        let path = self.model_path();
        anyhow::ensure!(path.is_file(), "--model {}: no such file", path.display());
        Detector::load(runtime, &path, self.family, DevicePreference::Auto)
            .with_context(|| format!("load {} as {:?}", path.display(), self.family))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct TruthArgs {
    /// Ground truth of the footage: a COCO JSON file, a MOTChallenge gt.txt, or a folder of YOLO
    /// label files (with classes.txt); the format is guessed from the path unless
    /// --ground-truth-format says.
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    #[arg(long, value_parser = str::parse::<TruthFormat>)]
    pub ground_truth_format: Option<TruthFormat>,
    /// The number the ground truth gives the first frame (MOTChallenge and FFmpeg's image names:
    /// 1; CVAT's exports: 0).
    #[arg(long, default_value_t = 1)]
    pub first_frame_number: u64,
    /// The ground truth's class names that are not COCO names, mapped to COCO names
    /// (`--class-map vehicle=car,pedestrian=person`; `NAME=-` leaves a class out).
    #[arg(long, value_delimiter = ',', value_parser = truth::parse_class_mapping)]
    pub class_map: Vec<(String, String)>,
}

impl TruthArgs {
    /// The ground truth, checked against the footage's frame size and length; `None` without
    /// `--ground-truth`.
    pub fn read(&self, probe: &Probe) -> anyhow::Result<Option<Truth>> {
        let Some(path) = &self.ground_truth else {
            return Ok(None);
        };
        let options = TruthOptions {
            format: self.ground_truth_format,
            first_frame_number: self.first_frame_number,
            class_map: self.class_map.clone(),
            // Past a --max-frames limit the ground truth goes on; only past the end is it wrong.
            frame_count: (!probe.cut_short).then(|| probe.frames()),
            ..TruthOptions::new(probe.size)
        };
        Ok(Some(Truth::read(path, &options)?))
    }
}

/// COCO ids of `--classes` names, with a message naming the bad one.
pub fn class_ids(names: &[String]) -> anyhow::Result<Vec<u32>> {
    autotuner_detect::labels::ids(names).map_err(|name| {
        anyhow::anyhow!("--classes: {name:?} is not a COCO class name (person, car, bicycle, ...)")
    })
}
