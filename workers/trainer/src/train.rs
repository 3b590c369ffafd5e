//! The fine-tuning job: load the dataset, cache the frozen part's outputs per training view,
//! train the trainable part with Adam on the SSD loss, evaluate on the eval split after every
//! epoch (keeping the best), checkpoint, export the tuned ONNX and verify it on ONNX Runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use autotuner_detect::eval::{self, Evaluation, GroundTruth, ImageDetection};
use autotuner_detect::{BBox, Detection, Network, Runtime, anchors, nms};
use burn::prelude::*;
use thiserror::Error;

use crate::augment::{self, Rng, View};
use crate::cache::FeatureCache;
use crate::checkpoint::{self, Checkpoint, Header};
use crate::dataset::{self, Dataset, LoadOptions, Sample};
use crate::graph::{GraphError, OnnxGraph, serialize};
use crate::loss::{self, Targets};
use crate::model::{Param, Student, Trainable};
pub use crate::progress::Progress;
use crate::report::{
    CacheReport, EpochRecord, EvalReport, ExportReport, GainReport, Report, SplitReport, Timing,
};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error("the training set has no labelled box: nothing to learn from")]
    NoLabels,
    #[error("model: {0}")]
    Model(#[from] GraphError),
    #[error("ONNX Runtime: {0}")]
    Runtime(#[from] autotuner_detect::DetectError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("image {0}")]
    Image(String),
    #[error("the exported model differs from the trained one by {0} (more than 1e-3)")]
    Export(f32),
    #[error("store the checkpoint: {0}")]
    Checkpoint(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrainError {
    let context = context.into();
    move |source| TrainError::Io { context, source }
}

/// The job's settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub train: PathBuf,
    pub eval: PathBuf,
    pub model: PathBuf,
    pub output: PathBuf,
    pub trainable: Trainable,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// How the learning rate changes over the job's steps.
    pub schedule: Schedule,
    /// Views per training image: the image itself and `views - 1` augmented copies.
    pub views: usize,
    pub seed: u64,
    /// Evaluate after every this many epochs (and always after the last); 0: only after the last.
    pub eval_every: usize,
    /// Stop when the eval AP has not improved for this many epochs (0: never). Only with
    /// `eval_every`: without evaluations between epochs there is no improvement to wait for.
    pub patience: usize,
    /// Stop after this many optimiser steps in this run (the epoch in progress is evaluated).
    pub max_steps: Option<u64>,
    /// Train on at most this many images, the most recent (highest ids).
    pub max_train_images: Option<usize>,
    /// Judge on the eval images of frames decoded since then (ms since the epoch): the round of
    /// collection this job trains on, the scene the camera shows now. All of them when the round
    /// has none.
    pub eval_since_ms: Option<u64>,
    pub cache_budget_bytes: usize,
    /// ONNX Runtime's library, for the frozen part and to verify the export.
    pub onnxruntime: PathBuf,
    pub load: LoadOptions,
    /// Where tensors live: burn's CPU backend unless a GPU backend was built in.
    pub device: Device,
    pub backend: String,
    /// Evaluate and export an exponential moving average of the weights with this decay per
    /// step, started at the starting weights, instead of the last step's weights. None: off.
    /// See [`DEFAULT_WEIGHT_AVERAGE`].
    pub weight_average: Option<f64>,
    /// Called with the checkpoint's path each time one is written (to copy it to object storage,
    /// so that a Job whose pod loses its disk still resumes).
    pub after_checkpoint: Option<CheckpointHook>,
}

impl TrainConfig {
    /// A job on these files with the defaults every caller shares: the settings contract's
    /// (`autotuner_api::contract::defaults`, as the CRD and `autotuner tune` default to), the
    /// schedule for the trainable part, two views per image, an evaluation every epoch, no early
    /// stop, a 2 GiB feature cache and burn's CPU backend. Callers change what differs with
    /// struct update syntax.
    pub fn new(train: PathBuf, eval: PathBuf, model: PathBuf, output: PathBuf, onnxruntime: PathBuf) -> Self {
        use autotuner_api::contract::defaults;
        let trainable = Trainable::default();
        Self {
            train,
            eval,
            model,
            output,
            trainable,
            epochs: defaults::EPOCHS as usize,
            batch_size: defaults::BATCH_SIZE as usize,
            learning_rate: defaults::LEARNING_RATE,
            schedule: Schedule::default_for(trainable),
            views: 2,
            seed: 1,
            eval_every: 1,
            patience: 0,
            max_steps: None,
            max_train_images: None,
            eval_since_ms: None,
            cache_budget_bytes: 2048 << 20,
            onnxruntime,
            load: LoadOptions::default(),
            device: Device::flex(),
            backend: "burn flex (CPU)".into(),
            weight_average: Some(DEFAULT_WEIGHT_AVERAGE),
            after_checkpoint: None,
        }
    }
}

/// The default decay of the weight average ([`TrainConfig::weight_average`]). The average starts
/// at the starting weights, so a job of few steps stays near them (0.9^8 = 0.43 of the start after
/// the 8 steps of TUD-Campus's 28 images) and a long one follows its last ~10 steps. Against each
/// scene's ground truth (bench-results/accuracy-weight-average.json): on TUD-Campus tuning went
/// from worse than the off-the-shelf student (AP -30% of the gap) to as good (+6%), on PETS09 the
/// AP gap closed 51% instead of 50% (AP@0.5 57% instead of 58%); 0.95 and 0.7 did worse.
pub const DEFAULT_WEIGHT_AVERAGE: f64 = 0.9;

/// A weight average's decay from the command line: at least 0 (0: none) and below 1.
pub fn parse_weight_average(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.0..1.0).contains(&d) => Ok(d),
        Ok(d) => Err(format!(
            "{d} is not a decay: give a value from 0 (no average) up to, not including, 1"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// An exponential moving average of the trainable tensors, updated after each optimiser step.
struct WeightAverage {
    decay: f64,
    params: Vec<Param>,
}

impl WeightAverage {
    /// Starts at `start` (plain tensors, no gradient).
    fn new(decay: f64, start: &[Param]) -> Self {
        let params = start
            .iter()
            .map(|p| Param {
                value: p.value.clone().inner(),
                ..p.clone()
            })
            .collect();
        Self { decay, params }
    }

    fn update(&mut self, params: &[Param]) {
        for (a, p) in self.params.iter_mut().zip(params) {
            a.value =
                a.value.clone().mul_scalar(self.decay) + p.value.clone().inner().mul_scalar(1.0 - self.decay);
        }
    }
}

/// The learning rate over the job: constant, or a cosine decay from `learning_rate` to zero over
/// all of the job's steps (so the last epochs refine rather than jump, which matters when the
/// whole network trains and the exported epoch is the best one seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    #[default]
    Constant,
    Cosine,
}

impl Schedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }

    /// Cosine when the feature extractor trains too: with a constant rate the best epoch of `unfrozen`
    /// on the reference experiment fell short of the AP@0.5 goal, with the decay it meets it.
    pub fn default_for(trainable: Trainable) -> Schedule {
        match trainable {
            Trainable::Unfrozen | Trainable::Most | Trainable::Upper => Schedule::Cosine,
            _ => Schedule::Constant,
        }
    }

    /// The rate for optimiser step `step` (0-based) of `total`.
    pub fn rate(self, base: f64, step: u64, total: u64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let progress = (step as f64 / total.max(1) as f64).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(format!(
                "unknown learning-rate schedule {other:?} (constant or cosine)"
            )),
        }
    }
}

/// See [`TrainConfig::after_checkpoint`].
#[derive(Clone)]
pub struct CheckpointHook(pub Arc<CheckpointFn>);

/// Given the checkpoint's path; an error fails the job (a checkpoint that cannot be kept would
/// make a restart start over unannounced).
pub type CheckpointFn = dyn Fn(&Path) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for CheckpointHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointHook")
    }
}

/// The checkpoint's name in the output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";

const EVAL_MIN_SCORE: f32 = 0.05;
const EVAL_NMS_IOU: f32 = 0.5;
const EVAL_MAX_DETECTIONS: usize = 100;
const EXTRACT_BATCH: usize = 8;
const VERIFY_IMAGES: usize = 4;

/// Training views of one split, with their cached cut values and targets.
struct Split {
    samples: Vec<Sample>,
    cache: FeatureCache,
    /// Per item: the sample index and its targets (training splits).
    items: Vec<(usize, Option<Targets>)>,
}

/// Per image, all cut values back to back; and the shape of each cut value (no batch axis).
type CutValues = (Vec<Vec<f32>>, Vec<[usize; 3]>);

/// Computes the frozen part of the student: with ONNX Runtime (the graph with the cut values as
/// its outputs), or nothing at all when training starts from the input image.
enum Frozen {
    Runtime { network: Network, outputs: Vec<usize> },
    Input,
}

impl Frozen {
    fn new(student: &Student, runtime: Option<&Runtime>) -> Result<Self, TrainError> {
        if student.cut == [student.graph.input_name()] {
            return Ok(Self::Input);
        }
        let runtime = runtime.ok_or_else(|| TrainError::Image("no ONNX Runtime".into()))?;
        let cut: Vec<&str> = student.cut.iter().map(String::as_str).collect();
        // Only the cut values: the runtime then skips the head (more work than the backbone).
        let bytes = serialize(&student.graph.with_outputs(&cut)?)?;
        let network = Network::from_bytes(runtime, &bytes, "student with feature outputs")?;
        let outputs = cut
            .iter()
            .map(|c| {
                network
                    .output_names()
                    .iter()
                    .position(|n| n == c)
                    .expect("added output")
            })
            .collect();
        Ok(Self::Runtime { network, outputs })
    }

    /// The cut values of a batch of student inputs.
    fn run(&mut self, inputs: &[f32], batch: usize) -> Result<CutValues, TrainError> {
        match self {
            Self::Input => {
                let len = inputs.len() / batch;
                Ok((
                    inputs.chunks(len).map(<[f32]>::to_vec).collect(),
                    vec![[300, 300, 3]],
                ))
            }
            Self::Runtime { network, outputs } => {
                let all = network.run(inputs, [batch, 300, 300, 3])?;
                let mut items = vec![Vec::new(); batch];
                let mut shapes = Vec::new();
                for &o in outputs.iter() {
                    let (shape, data) = &all[o];
                    let per = data.len() / batch;
                    shapes.push([shape[1], shape[2], shape[3]]);
                    for (b, item) in items.iter_mut().enumerate() {
                        item.extend_from_slice(&data[b * per..(b + 1) * per]);
                    }
                }
                Ok((items, shapes))
            }
        }
    }
}

fn class_index(student: &Student, class_id: u32) -> Option<usize> {
    student.classes.iter().position(|&c| c == class_id)
}

/// Decodes, runs the frozen part and caches every view of `samples`.
#[allow(clippy::too_many_arguments)]
fn build_split(
    samples: Vec<Sample>,
    views: usize,
    seed: u64,
    student: &Student,
    frozen: &mut Frozen,
    budget: usize,
    spill_dir: &Path,
    with_targets: bool,
    progress: &mut Progress,
    stage: &str,
) -> Result<(Split, Vec<[usize; 3]>), TrainError> {
    let pre = augment::student_preprocess();
    let mut pending: Vec<(usize, Option<Targets>)> = Vec::new();
    let mut inputs: Vec<f32> = Vec::new();
    let mut scratch = Vec::new();
    let mut cache: Option<FeatureCache> = None;
    let mut items = Vec::new();
    let mut shapes = Vec::new();
    let total = samples.len() * views;
    let mut flush = |pending: &mut Vec<(usize, Option<Targets>)>,
                     inputs: &mut Vec<f32>,
                     cache: &mut Option<FeatureCache>,
                     items: &mut Vec<(usize, Option<Targets>)>,
                     shapes: &mut Vec<[usize; 3]>|
     -> Result<(), TrainError> {
        if pending.is_empty() {
            return Ok(());
        }
        let (values, s) = frozen.run(inputs, pending.len())?;
        *shapes = s;
        for v in values {
            let c = match cache {
                Some(c) => c,
                None => cache.insert(
                    FeatureCache::new(v.len(), total, budget, spill_dir).map_err(io("feature cache"))?,
                ),
            };
            c.push(&v).map_err(io("feature cache"))?;
        }
        items.append(pending);
        inputs.clear();
        Ok(())
    };
    for (i, sample) in samples.iter().enumerate() {
        let rgb = dataset::read_rgb(sample).map_err(TrainError::Image)?;
        for v in 0..views {
            let view = View::of(sample, v, seed);
            let start = inputs.len();
            inputs.resize(start + pre.len(), 0.0);
            augment::prepare(
                &rgb,
                sample.width as usize,
                sample.height as usize,
                &view,
                &mut scratch,
                &mut inputs[start..],
            );
            let targets = with_targets.then(|| {
                let labels = augment::view_labels(sample, &view);
                let boxes: Vec<([f32; 4], usize)> = labels
                    .boxes
                    .iter()
                    .filter_map(|(b, c)| class_index(student, *c).map(|k| (*b, k)))
                    .collect();
                loss::assign(&student.anchors, &boxes, &labels.ignore)
            });
            pending.push((i, targets));
            if pending.len() == EXTRACT_BATCH {
                flush(&mut pending, &mut inputs, &mut cache, &mut items, &mut shapes)?;
            }
        }
        progress.update(stage, (i + 1) * views, total, "");
    }
    flush(&mut pending, &mut inputs, &mut cache, &mut items, &mut shapes)?;
    let cache = cache.expect("at least one sample");
    Ok((
        Split {
            samples,
            cache,
            items,
        },
        shapes,
    ))
}

/// The cut tensors of the given cache items.
fn batch_tensors(
    split: &Split,
    items: &[usize],
    shapes: &[[usize; 3]],
    device: &Device,
) -> Result<Vec<Tensor<4>>, TrainError> {
    let len = split.cache.item_len();
    let mut buf = vec![0.0f32; len];
    let mut per_cut: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| Vec::with_capacity(items.len() * s.iter().product::<usize>()))
        .collect();
    for &i in items {
        split.cache.get(i, &mut buf).map_err(io("feature cache"))?;
        let mut offset = 0;
        for (k, s) in shapes.iter().enumerate() {
            let n: usize = s.iter().product();
            per_cut[k].extend_from_slice(&buf[offset..offset + n]);
            offset += n;
        }
    }
    Ok(per_cut
        .into_iter()
        .zip(shapes)
        .map(|(data, s)| {
            Tensor::<4>::from_data(TensorData::new(data, [items.len(), s[0], s[1], s[2]]), device)
        })
        .collect())
}

/// Detections of the dataset's classes from the student's outputs for one image.
fn decode(boxes: &[f32], logits: &[f32], student: &Student, width: f32, height: f32) -> Vec<Detection> {
    let k = student.classes.len();
    let mut out = Vec::new();
    for (j, anchor) in student.anchors.iter().enumerate() {
        let mut decoded = None;
        for (c, &class_id) in student.classes.iter().enumerate() {
            let score = 1.0 / (1.0 + (-logits[j * k + c]).exp());
            if score < EVAL_MIN_SCORE {
                continue;
            }
            let bbox = *decoded.get_or_insert_with(|| {
                let [y0, x0, y1, x1] =
                    anchors::decode(boxes[4 * j..4 * j + 4].try_into().expect("4"), anchor);
                BBox::new(
                    x0.clamp(0.0, 1.0) * width,
                    y0.clamp(0.0, 1.0) * height,
                    x1.clamp(0.0, 1.0) * width,
                    y1.clamp(0.0, 1.0) * height,
                )
            });
            out.push(Detection {
                bbox,
                class_id,
                score,
            });
        }
    }
    nms(&mut out, EVAL_NMS_IOU, EVAL_MAX_DETECTIONS);
    out
}

fn to_vec(t: Tensor<3>) -> Vec<f32> {
    t.inner().into_data().try_to_vec::<f32>().expect("f32 outputs")
}

/// The student with `params` on the eval split (whole images, no augmentation): its AP, and its
/// detections for the paired comparison with the model the run started from.
struct Scored {
    evaluation: Evaluation,
    detections: Vec<ImageDetection>,
}

fn evaluate(
    student: &Student,
    params: &[Param],
    split: &Split,
    shapes: &[[usize; 3]],
    device: &Device,
    progress: &mut Progress,
) -> Result<Scored, TrainError> {
    let inner: Vec<Param> = params
        .iter()
        .map(|p| Param {
            value: p.value.clone().inner(),
            ..p.clone()
        })
        .collect();
    let mut detections = Vec::new();
    let indices: Vec<usize> = (0..split.items.len()).collect();
    let n = student.anchors.len();
    let k = student.classes.len();
    for chunk in indices.chunks(16) {
        let cut = batch_tensors(split, chunk, shapes, &device.clone().inner())?;
        let (boxes, logits) = student.forward(cut, &inner)?;
        let (boxes, logits) = (to_vec(boxes), to_vec(logits));
        for (b, &item) in chunk.iter().enumerate() {
            let sample = &split.samples[split.items[item].0];
            let found = decode(
                &boxes[b * n * 4..(b + 1) * n * 4],
                &logits[b * n * k..(b + 1) * n * k],
                student,
                sample.width as f32,
                sample.height as f32,
            );
            detections.extend(found.into_iter().map(|detection| ImageDetection {
                image_id: sample.id,
                detection,
            }));
        }
        progress.update("evaluate", chunk[chunk.len() - 1] + 1, indices.len(), "");
    }
    let (images, truth) = eval_truth(split, &student.classes);
    let evaluation = eval::evaluate(&images, &student.classes, &truth, &detections);
    Ok(Scored {
        evaluation,
        detections,
    })
}

/// The eval split's images and labels as ground truth (its ignore regions as crowd regions).
fn eval_truth(split: &Split, classes: &[u32]) -> (Vec<u64>, Vec<GroundTruth>) {
    let mut truth = Vec::new();
    for s in &split.samples {
        for l in &s.labels {
            truth.push(GroundTruth {
                image_id: s.id,
                class_id: l.class_id,
                bbox: l.bbox,
                crowd: false,
            });
        }
        for r in &s.ignore {
            for &class_id in classes {
                truth.push(GroundTruth {
                    image_id: s.id,
                    class_id,
                    bbox: *r,
                    crowd: true,
                });
            }
        }
    }
    let images: Vec<u64> = split.samples.iter().map(|s| s.id).collect();
    (images, truth)
}

/// Draws of the paired bootstrap that bounds the candidate's gain over its starting model.
const GAIN_DRAWS: usize = 1000;

/// Adam, over the trainable tensors.
struct Adam {
    rate: f64,
    step: u64,
    first: Vec<Tensor<4>>,
    second: Vec<Tensor<4>>,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPSILON: f64 = 1e-8;

    fn new(rate: f64, params: &[Param]) -> Self {
        let zeros = |p: &Param| p.value.clone().inner().zeros_like();
        Self {
            rate,
            step: 0,
            first: params.iter().map(zeros).collect(),
            second: params.iter().map(zeros).collect(),
        }
    }

    /// Applies one step; `grads[i]` is the gradient of `params[i]`.
    fn update(&mut self, params: &mut [Param], grads: Vec<Tensor<4>>) {
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - Self::BETA1.powi(t);
        let correction2 = 1.0 - Self::BETA2.powi(t);
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let m = self.first[i].clone().mul_scalar(Self::BETA1) + g.clone().mul_scalar(1.0 - Self::BETA1);
            let v = self.second[i].clone().mul_scalar(Self::BETA2)
                + g.powi_scalar(2).mul_scalar(1.0 - Self::BETA2);
            let step = (m.clone().div_scalar(correction1))
                / (v.clone().div_scalar(correction2).sqrt().add_scalar(Self::EPSILON));
            let updated = p.value.clone().inner() - step.mul_scalar(self.rate);
            p.value = updated.autodiff().require_grad();
            self.first[i] = m;
            self.second[i] = v;
        }
    }
}

/// The weights a job evaluates and exports: the average when it keeps one, else the last step's.
fn judged<'a>(average: &'a Option<WeightAverage>, params: &'a [Param]) -> &'a [Param] {
    average.as_ref().map_or(params, |a| &a.params)
}

fn host(t: &Tensor<4>) -> Vec<f32> {
    t.clone().inner().into_data().try_to_vec::<f32>().expect("f32")
}

fn device_tensor(values: Vec<f32>, like: &Tensor<4>, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(TensorData::new(values, like.dims()), device)
}

/// A short stable hash of the job's inputs and settings: a checkpoint only resumes the same job.
fn fingerprint(config: &TrainConfig, classes: &[u32]) -> Result<String, TrainError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for path in [&config.train, &config.eval, &config.model] {
        feed(&std::fs::read(path).map_err(io(format!("read {}", path.display())))?);
    }
    feed(
        format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{:?}",
            config.trainable.as_str(),
            config.batch_size,
            config.learning_rate,
            config.schedule.as_str(),
            config.views,
            config.seed,
            classes,
            config.weight_average,
        )
        .as_bytes(),
    );
    Ok(format!("{h:016x}"))
}

/// Runs the job and returns its report (also written to `output/report.json`).
pub fn run(config: &TrainConfig, progress: &mut Progress) -> Result<Report, TrainError> {
    let started = Instant::now();
    let mut timing = Timing::default();
    std::fs::create_dir_all(&config.output).map_err(io(format!("create {}", config.output.display())))?;
    let device = config.device.clone().autodiff();

    let mut train: Dataset = dataset::load(&config.train, config.load)?;
    if let Some(cap) = config.max_train_images.filter(|&c| c < train.samples.len()) {
        train.samples.sort_by_key(|s| s.id);
        train.samples.drain(..train.samples.len() - cap);
    }
    let mut eval_set: Dataset = dataset::load(&config.eval, config.load)?;
    let eval_round_only = match config.eval_since_ms {
        Some(since) if eval_set.keep_decoded_since(since) => Some(since),
        Some(since) => {
            tracing::warn!(
                since_ms = since,
                "no eval image is of this round yet: judging on the whole eval split"
            );
            None
        }
        None => None,
    };
    if train.boxes() == 0 {
        return Err(TrainError::NoLabels);
    }
    tracing::info!(
        train_images = train.samples.len(),
        train_boxes = train.boxes(),
        eval_images = eval_set.samples.len(),
        skipped = %train.skipped,
        "dataset loaded"
    );
    let mut classes = train.classes.clone();
    classes.extend(&eval_set.classes);
    classes.sort_unstable();
    classes.dedup();
    let graph = OnnxGraph::load(&config.model, &config.device)?;
    let student = Student::new(graph, config.trainable, classes.clone())?;
    let runtime = Runtime::load(&config.onnxruntime)?;
    timing.load_seconds = started.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut frozen = Frozen::new(&student, Some(&runtime))?;
    let frozen_name = match frozen {
        Frozen::Input => "none (the input image is cached)",
        Frozen::Runtime { .. } => "onnxruntime",
    };
    let views = config.views.max(1);
    let (train_split, shapes) = build_split(
        train.samples.clone(),
        views,
        config.seed,
        &student,
        &mut frozen,
        config.cache_budget_bytes,
        &config.output,
        true,
        progress,
        "features",
    )?;
    // The eval split shares what is left of the budget.
    let left = config
        .cache_budget_bytes
        .saturating_sub(train_split.cache.bytes());
    let (eval_split, _) = build_split(
        eval_set.samples.clone(),
        1,
        config.seed,
        &student,
        &mut frozen,
        left,
        &config.output,
        false,
        progress,
        "eval",
    )?;
    timing.features_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let initial = student.initial_params(&device);
    let before = evaluate(&student, &initial, &eval_split, &shapes, &device, progress)?;
    timing.eval_seconds += t.elapsed().as_secs_f64();
    tracing::info!(
        ap = before.evaluation.ap,
        ap50 = before.evaluation.ap50,
        "off-the-shelf student on the eval split"
    );

    let mut params: Vec<Param> = initial
        .iter()
        .map(|p| Param {
            value: p.value.clone().require_grad(),
            ..p.clone()
        })
        .collect();
    let mut adam = Adam::new(config.learning_rate, &params);
    let mut average = config
        .weight_average
        .map(|decay| WeightAverage::new(decay, &initial));
    let print = fingerprint(config, &classes)?;
    let ckpt_path = config.output.join(CHECKPOINT_FILE);
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut best: Vec<Vec<f32>> = params.iter().map(|p| host(&p.value)).collect();
    let (mut best_epoch, mut best_ap) = (0usize, f64::MIN);
    let mut resumed_from = None;
    let mut best_eval: Option<Scored> = None;
    match checkpoint::load(&ckpt_path).map_err(io("read the checkpoint"))? {
        Some(c) if c.header.fingerprint == print && c.values.len() == params.len() => {
            let plain = config.device.clone();
            for (i, p) in params.iter_mut().enumerate() {
                p.value = device_tensor(c.values[i].clone(), &p.value, &device).require_grad();
                adam.first[i] = device_tensor(c.first_moments[i].clone(), &p.value, &plain);
                adam.second[i] = device_tensor(c.second_moments[i].clone(), &p.value, &plain);
            }
            if let (Some(average), Some(values)) = (average.as_mut(), &c.averaged) {
                for (a, v) in average.params.iter_mut().zip(values) {
                    a.value = device_tensor(v.clone(), &a.value, &plain);
                }
            }
            adam.step = c.header.adam_step;
            best = c.best;
            best_epoch = c.header.best_epoch;
            best_ap = c.header.best_ap;
            history = c.header.history;
            resumed_from = Some(c.header.epoch);
            tracing::info!(epoch = c.header.epoch, "resuming from the checkpoint");
        }
        Some(_) => tracing::warn!("the checkpoint belongs to other inputs or settings: starting over"),
        None => {}
    }

    let mut step_seconds = 0.0f64;
    let mut steps = 0u64;
    let first_epoch = history.len() + 1;
    let batches = train_split.samples.len().div_ceil(config.batch_size.max(1));
    for epoch in first_epoch..=config.epochs {
        let epoch_started = Instant::now();
        let mut rng = Rng::new(config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..train_split.samples.len()).collect();
        rng.shuffle(&mut order);
        let (mut sum, mut sum_cls, mut sum_loc) = (0.0f64, 0.0f64, 0.0f64);
        let mut ran = 0usize;
        for (b, chunk) in order.chunks(config.batch_size.max(1)).enumerate() {
            // Each image is seen through one of its cached views, drawn anew every epoch.
            let step_started = Instant::now();
            let items: Vec<usize> = chunk.iter().map(|&s| s * views + rng.below(views)).collect();
            let cut = batch_tensors(&train_split, &items, &shapes, &device)?;
            let (boxes, logits) = student.forward(cut, &params)?;
            let targets: Vec<&Targets> = items
                .iter()
                .map(|&i| train_split.items[i].1.as_ref().expect("training targets"))
                .collect();
            let l = loss::ssd_loss(boxes, logits, &targets);
            let grads = l.total.backward();
            let g: Vec<Tensor<4>> = params
                .iter()
                .map(|p| {
                    p.value
                        .grad(&grads)
                        .unwrap_or_else(|| p.value.clone().inner().zeros_like())
                })
                .collect();
            adam.rate =
                config
                    .schedule
                    .rate(config.learning_rate, adam.step, (config.epochs * batches) as u64);
            adam.update(&mut params, g);
            if let Some(average) = average.as_mut() {
                average.update(&params);
            }
            steps += 1;
            step_seconds += step_started.elapsed().as_secs_f64();
            let total = l.classification + l.localization;
            sum += total as f64;
            sum_cls += l.classification as f64;
            sum_loc += l.localization as f64;
            ran += 1;
            if config.max_steps.is_some_and(|m| steps >= m) {
                break;
            }
            // One bar over every epoch: its estimate is the time the whole fine-tune has left
            // (the evaluations between epochs aside).
            progress.update(
                "fine-tune",
                (epoch - 1) * batches + b + 1,
                config.epochs * batches,
                &format!(
                    "epoch {epoch}/{}, loss {:.3}",
                    config.epochs,
                    sum / (b + 1) as f64
                ),
            );
        }
        let last = epoch == config.epochs || config.max_steps.is_some_and(|m| steps >= m);
        let due = last || (config.eval_every > 0 && epoch % config.eval_every == 0);
        let t = Instant::now();
        let e = if due {
            Some(evaluate(
                &student,
                judged(&average, &params),
                &eval_split,
                &shapes,
                &device,
                progress,
            )?)
        } else {
            None
        };
        timing.eval_seconds += t.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch,
            loss: sum / ran.max(1) as f64,
            classification_loss: sum_cls / ran.max(1) as f64,
            localization_loss: sum_loc / ran.max(1) as f64,
            ap: e.as_ref().map(|e| e.evaluation.ap.unwrap_or(0.0)),
            ap50: e.as_ref().map(|e| e.evaluation.ap50.unwrap_or(0.0)),
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch,
            loss = record.loss,
            ap = record.ap,
            ap50 = record.ap50,
            "epoch done"
        );
        if let (Some(ap), Some(e)) = (record.ap, e)
            && ap > best_ap
        {
            best_ap = ap;
            best_epoch = epoch;
            best = judged(&average, &params).iter().map(|p| host(&p.value)).collect();
            best_eval = Some(e);
        }
        history.push(record);
        let values: Vec<Vec<f32>> = params.iter().map(|p| host(&p.value)).collect();
        checkpoint::save(
            &ckpt_path,
            &Checkpoint {
                header: Header {
                    fingerprint: print.clone(),
                    epoch,
                    history: history.clone(),
                    best_epoch,
                    best_ap,
                    lengths: values.iter().map(Vec::len).collect(),
                    adam_step: adam.step,
                    averaged: average.is_some(),
                },
                values,
                first_moments: adam.first.iter().map(host).collect(),
                second_moments: adam.second.iter().map(host).collect(),
                best: best.clone(),
                averaged: average
                    .as_ref()
                    .map(|a| a.params.iter().map(|p| host(&p.value)).collect()),
            },
        )
        .map_err(io("write the checkpoint"))?;
        if let Some(CheckpointHook(hook)) = &config.after_checkpoint {
            hook(&ckpt_path).map_err(TrainError::Checkpoint)?;
        }
        if config.max_steps.is_some_and(|m| steps >= m) {
            break;
        }
        if stops_early(config, epoch, best_epoch) {
            tracing::info!(
                epoch,
                best_epoch,
                "no improvement on the eval split: stopping early"
            );
            break;
        }
    }
    // Optimiser steps only: evaluation and checkpoints are counted apart.
    timing.train_seconds = step_seconds;
    timing.steps = steps;
    timing.seconds_per_step = if steps > 0 {
        timing.train_seconds / steps as f64
    } else {
        0.0
    };

    // The best epoch's weights, evaluated and exported.
    let chosen: Vec<Param> = params
        .iter()
        .zip(&best)
        .map(|(p, v)| Param {
            value: device_tensor(v.clone(), &p.value, &config.device),
            ..p.clone()
        })
        .collect();
    let after = match best_eval {
        Some(e) => e,
        // Resumed with nothing left to train: evaluate the checkpoint's best.
        None => {
            let t = Instant::now();
            let e = evaluate(&student, &chosen, &eval_split, &shapes, &device, progress)?;
            timing.eval_seconds += t.elapsed().as_secs_f64();
            e
        }
    };

    let (images, truth) = eval_truth(&eval_split, &student.classes);
    let gain = eval::paired_gain(
        &images,
        &student.classes,
        &truth,
        &before.detections,
        &after.detections,
        GAIN_DRAWS,
        config.seed,
    );
    if let Some(g) = &gain {
        tracing::info!(
            gain = g.ap,
            lower_bound = g.ap_lower_bound,
            "the candidate's AP gain over its starting model on the eval split (95% lower bound: paired bootstrap over its images)"
        );
    }

    let t = Instant::now();
    let export = export(config, &student, &chosen, &runtime, &mut frozen, &eval_split)?;
    timing.export_seconds = t.elapsed().as_secs_f64();
    timing.total_seconds = started.elapsed().as_secs_f64();

    let report = Report {
        trainable_layers: config.trainable.as_str().into(),
        backend: config.backend.clone(),
        frozen_features: frozen_name.into(),
        classes: classes
            .iter()
            .map(|&c| autotuner_detect::labels::name(c).unwrap_or("?").to_string())
            .collect(),
        epochs_requested: config.epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        schedule: config.schedule.as_str().into(),
        weight_average: config.weight_average,
        train: SplitReport::of(&train, views),
        eval: SplitReport::of(&eval_set, 1),
        eval_since_ms: eval_round_only,
        cache: Some(CacheReport {
            kind: train_split.cache.kind(),
            items: train_split.cache.len(),
            bytes: train_split.cache.bytes(),
            budget_bytes: config.cache_budget_bytes,
        }),
        timing,
        epochs: history,
        resumed_from_epoch: resumed_from,
        selected_epoch: best_epoch,
        before: EvalReport::from(&before.evaluation),
        after: EvalReport::from(&after.evaluation),
        gain: gain.map(GainReport::from),
        export,
    };
    let json = serde_json::to_vec_pretty(&report).expect("serialisable report");
    std::fs::write(config.output.join("report.json"), json).map_err(io("write the report"))?;
    Ok(report)
}

/// Writes the tuned model and checks it on ONNX Runtime against the burn model on a few eval
/// images: same box encodings and trained logits within 1e-3.
fn export(
    config: &TrainConfig,
    student: &Student,
    params: &[Param],
    runtime: &Runtime,
    frozen: &mut Frozen,
    eval_split: &Split,
) -> Result<ExportReport, TrainError> {
    let model = student.graph.with_weights(&student.weights(params))?;
    let bytes = serialize(&model)?;
    let path = config.output.join("model.onnx");
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, &bytes).map_err(io("write the model"))?;
    std::fs::rename(&tmp, &path).map_err(io("write the model"))?;

    let mut network = Network::from_bytes(runtime, &bytes, "the exported model")?;
    let pre = augment::student_preprocess();
    let count = eval_split.samples.len().min(VERIFY_IMAGES);
    let mut inputs = vec![0.0f32; count * pre.len()];
    let mut scratch = Vec::new();
    for (i, s) in eval_split.samples.iter().take(count).enumerate() {
        let rgb = dataset::read_rgb(s).map_err(TrainError::Image)?;
        let view = View::whole(s.width, s.height);
        augment::prepare(
            &rgb,
            s.width as usize,
            s.height as usize,
            &view,
            &mut scratch,
            &mut inputs[i * pre.len()..(i + 1) * pre.len()],
        );
    }
    let outputs = network.run(&inputs, [count, 300, 300, 3])?;
    // The frozen part computed afresh, not read from the cache: an f16 cache is rounded.
    let (values, shapes) = frozen.run(&inputs, count)?;
    let plain = config.device.clone();
    let mut cut = Vec::new();
    let mut offset = 0;
    for s in &shapes {
        let n: usize = s.iter().product();
        let data: Vec<f32> = values
            .iter()
            .flat_map(|v| v[offset..offset + n].iter().copied())
            .collect();
        cut.push(Tensor::<4>::from_data(
            TensorData::new(data, [count, s[0], s[1], s[2]]),
            &plain,
        ));
        offset += n;
    }
    let (boxes, logits) = student.forward(cut, params)?;
    let (boxes, logits) = (to_vec(boxes), to_vec(logits));
    let mut worst = 0.0f32;
    for (a, b) in outputs[0].1.iter().zip(&boxes) {
        worst = worst.max((a - b).abs());
    }
    let columns = student.logit_columns();
    let full = student.head_classes();
    let k = columns.len();
    for row in 0..count * student.anchors.len() {
        for (c, &column) in columns.iter().enumerate() {
            worst = worst.max((outputs[1].1[row * full + column] - logits[row * k + c]).abs());
        }
    }
    if worst > 1e-3 {
        return Err(TrainError::Export(worst));
    }
    tracing::info!(path = %path.display(), max_difference = worst, "model exported and verified");
    Ok(ExportReport {
        path: path.display().to_string(),
        max_difference: worst,
        verified_images: count,
    })
}

/// Whether training stops after `epoch`, the best evaluated epoch so far being `best_epoch`
/// (0: none yet, the starting weights). Only epochs that were evaluated can be "no better": with
/// `eval_every` 0 the one evaluation is after the last epoch, and stopping before it would export
/// the starting weights unchanged.
fn stops_early(config: &TrainConfig, epoch: usize, best_epoch: usize) -> bool {
    config.patience > 0 && config.eval_every > 0 && epoch >= best_epoch + config.patience
}

#[cfg(test)]
mod tests {
    use super::{Param, Schedule, TrainConfig, WeightAverage, host, parse_weight_average, stops_early};
    use burn::prelude::*;

    fn param(values: [f32; 2], device: &Device) -> Param {
        Param {
            initializer: "w".into(),
            rows: None,
            value: Tensor::<4>::from_data(TensorData::new(values.to_vec(), [2, 1, 1, 1]), device),
        }
    }

    #[test]
    fn the_weight_average_starts_at_the_starting_weights_and_follows_the_steps_by_its_decay() {
        let device = Device::flex();
        let mut average = WeightAverage::new(0.9, &[param([1.0, -1.0], &device)]);
        assert_eq!(host(&average.params[0].value), [1.0, -1.0]);
        // Two steps that moved the weights to 3 and 1: 0.9 * 1 + 0.1 * 3 = 1.2, then
        // 0.9 * 1.2 + 0.1 * 3 = 1.38 (and -0.8, -0.62 for the second weight).
        let trained = [param([3.0, 1.0], &device)];
        average.update(&trained);
        average.update(&trained);
        let got = host(&average.params[0].value);
        assert!(
            (got[0] - 1.38).abs() < 1e-6 && (got[1] + 0.62).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn a_weight_average_decay_is_refused_outside_zero_to_one() {
        assert_eq!(parse_weight_average("0.9"), Ok(0.9));
        assert_eq!(parse_weight_average("0"), Ok(0.0));
        for bad in ["1", "1.5", "-0.1", "nine"] {
            assert!(parse_weight_average(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patience_stops_only_after_evaluated_epochs_that_were_no_better() {
        let mut config = TrainConfig::new(
            "train".into(),
            "eval".into(),
            "model.onnx".into(),
            "out".into(),
            "libonnxruntime.so".into(),
        );
        config.epochs = 8;
        config.patience = 4;
        // Evaluated only after the last epoch: epoch 4 without an evaluation is not "4 epochs
        // without improvement" (stopping there exported the starting weights as the candidate).
        config.eval_every = 0;
        assert!((1..=8).all(|epoch| !stops_early(&config, epoch, 0)));
        // Evaluated every epoch: the best was epoch 2, and epochs 3 to 6 were no better.
        config.eval_every = 1;
        assert!(!stops_early(&config, 5, 2));
        assert!(stops_early(&config, 6, 2));
        config.patience = 0;
        assert!(!stops_early(&config, 8, 0));
    }

    #[test]
    fn the_cosine_schedule_starts_at_the_rate_halves_midway_and_ends_at_zero() {
        let rate = |step| Schedule::Cosine.rate(1e-3, step, 100);
        assert!((rate(0) - 1e-3).abs() < 1e-12);
        assert!((rate(50) - 5e-4).abs() < 1e-12);
        assert!(rate(100).abs() < 1e-12);
        assert!(rate(30) > rate(31), "the rate decreases");
        assert_eq!(Schedule::Constant.rate(1e-3, 99, 100), 1e-3);
        assert_eq!("cosine".parse::<Schedule>(), Ok(Schedule::Cosine));
        assert!("linear".parse::<Schedule>().is_err());
    }
}
