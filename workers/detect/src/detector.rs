//! Detectors on ONNX Runtime: a model file, its family (which fixes the input and the meaning of
//! the outputs), and the decoding of its outputs into detections in image pixels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;
use thiserror::Error;

use crate::anchors::{self, Anchor, SsdAnchorConfig};
use crate::geometry::{BBox, Detection, nms};
use crate::labels;
use crate::preprocess::{Fit, Layout, Placement, Preprocess, Resampling, RgbImage, Yuv420Image};

/// Detector output layouts (the API's `detectorFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Ultralytics YOLO v8/v11/v12: input 1x3xHxW RGB 0..1 letterboxed, output [N, 4 + classes,
    /// anchors] of centre x, centre y, width, height and per-class scores; NMS is ours.
    Yolo,
    /// TF Object Detection API SSD exported as its raw head: input NHWC scaled to -1..1, outputs
    /// box encodings [N, anchors, 1, 4] and class logits [N, anchors, 1 + classes]; anchors, box
    /// decoding and NMS are ours.
    SsdRaw,
    /// TF Object Detection API SSD with its post-processing in the graph: input uint8 NHWC of any
    /// size, outputs num_detections, detection_boxes (normalised ymin, xmin, ymax, xmax),
    /// detection_scores, detection_classes (COCO ids).
    SsdPostprocessed,
}

impl std::str::FromStr for Family {
    type Err = String;
    /// The CameraTuning API's names (`ssdRaw`, `yolo`, `tfObjectDetection`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ssdRaw" => Ok(Self::SsdRaw),
            "yolo" => Ok(Self::Yolo),
            "tfObjectDetection" => Ok(Self::SsdPostprocessed),
            other => Err(format!(
                "unknown model family {other:?} (ssdRaw, yolo, tfObjectDetection)"
            )),
        }
    }
}

/// What a detection call keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectOptions {
    pub min_score: f32,
    pub iou_threshold: f32,
    pub max_detections: usize,
    /// Only these COCO category ids (all when `None`).
    pub classes: Option<Vec<u32>>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            min_score: 0.25,
            iou_threshold: 0.5,
            max_detections: 300,
            classes: None,
        }
    }
}

impl DetectOptions {
    /// What COCO AP expects of a detector's output (pycocotools keeps the best 100 per image and
    /// integrates precision down to low scores): every detection of `classes` from 0.05 up. The
    /// trainer's evaluation, the standalone report and the drift check use these, so their
    /// figures compare.
    pub fn for_evaluation(classes: &[u32]) -> Self {
        Self {
            min_score: 0.05,
            iou_threshold: 0.5,
            max_detections: 100,
            classes: Some(classes.to_vec()),
        }
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    pub fn as_str(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// One output tensor of a model: its shape and values.
pub type RawOutput = (Vec<usize>, Vec<f32>);

/// The CPU threads of one model's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Threads within one operator (0: ONNX Runtime's default, one per core).
    pub intra_op: usize,
    /// Let idle threads spin before sleeping: lower latency for back-to-back calls, but a core
    /// busy between them. A stream at a camera's frame rate has gaps between frames, so it is
    /// cheaper without.
    pub spinning: bool,
}

impl Default for Threads {
    fn default() -> Self {
        Self {
            intra_op: 0,
            spinning: true,
        }
    }
}

impl Threads {
    fn apply(
        &self,
        builder: ort::session::builder::SessionBuilder,
    ) -> ort::Result<ort::session::builder::SessionBuilder> {
        let builder = builder
            .with_intra_op_spinning(self.spinning)
            .map_err(ort::Error::<()>::from)?;
        if self.intra_op > 0 {
            return builder
                .with_intra_threads(self.intra_op)
                .map_err(ort::Error::<()>::from);
        }
        Ok(builder)
    }
}

/// How a detector is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    pub device: DevicePreference,
    pub threads: Threads,
    /// Only these COCO classes are ever asked for: a raw SSD head computes no other logits.
    pub classes: Option<Vec<u32>>,
}

/// Which devices a detector may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// CUDA when the runtime library and a GPU allow it, else the CPU.
    #[default]
    Auto,
    Cpu,
}

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("ONNX Runtime is not loaded: call Runtime::load first")]
    NotLoaded,
    #[error("cannot load model {path}: {source}")]
    Model { path: PathBuf, source: ort::Error },
    #[error("model {path} does not look like a {family:?} detector: {reason}")]
    Layout {
        path: PathBuf,
        family: Family,
        reason: String,
    },
    #[error("inference failed: {0}")]
    Inference(#[from] ort::Error),
    #[error("unexpected output: {0}")]
    Output(String),
}

/// The ONNX Runtime library, loaded once per process.
#[derive(Debug, Clone)]
pub struct Runtime {
    environment: Environment,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// Loads ONNX Runtime from `library` (`libonnxruntime.so.<version>`, such as the one in the
    /// PyPI `onnxruntime` or `onnxruntime-gpu` wheel). Later calls return the first result.
    pub fn load(library: &Path) -> Result<Runtime, DetectError> {
        RUNTIME
            .get_or_init(|| {
                // The real path: ONNX Runtime looks for its execution-provider libraries (CUDA)
                // next to the file it was loaded from, and the assets folder holds a symlink.
                let library = std::fs::canonicalize(library).map_err(|e| e.to_string())?;
                let builder = ort::init_from(&library).map_err(|e| e.to_string())?;
                let environment = builder
                    .with_name("autotuner")
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Runtime { environment })
            })
            .clone()
            .map_err(|message| DetectError::Runtime {
                path: library.to_path_buf(),
                message,
            })
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }
}

enum Adapter {
    Yolo {
        classes: usize,
    },
    SsdRaw {
        anchors: Vec<Anchor>,
        classes: usize,
        /// The class id of each logits column when the head was cut down to a few classes.
        column_ids: Option<Vec<u32>>,
    },
    SsdPostprocessed,
}

/// One model, ready to run. `detect` needs `&mut self`: give each worker thread its own detector,
/// or share one behind a lock.
pub struct Detector {
    session: Session,
    family: Family,
    adapter: Adapter,
    preprocess: Option<Preprocess>,
    input_name: String,
    output_names: Vec<String>,
    batch: Option<usize>,
    device: Device,
    cuda_unavailable: Option<String>,
    input: Vec<f32>,
    /// Per-frame scratch of [`Detector::detect_frame`]: the taps of the last frame size, and
    /// RGB for the family that takes whole images.
    resampling: Resampling,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("family", &self.family)
            .field("device", &self.device)
            .field("input", &self.input_name)
            .finish_non_exhaustive()
    }
}

fn static_dims(shape: &[i64]) -> Vec<Option<usize>> {
    shape.iter().map(|&d| (d > 0).then_some(d as usize)).collect()
}

impl Detector {
    /// Loads `model` as a `family` detector, on CUDA when `device` allows and it works.
    pub fn load(
        runtime: &Runtime,
        model: &Path,
        family: Family,
        device: DevicePreference,
    ) -> Result<Self, DetectError> {
        Self::load_with(runtime, model, family, device, Threads::default())
    }

    /// [`load`](Self::load) with the CPU threads ONNX Runtime may use.
    pub fn load_with(
        runtime: &Runtime,
        model: &Path,
        family: Family,
        device: DevicePreference,
        threads: Threads,
    ) -> Result<Self, DetectError> {
        Self::load_for(
            runtime,
            model,
            family,
            &LoadOptions {
                device,
                threads,
                classes: None,
            },
        )
    }

    /// [`load`](Self::load) with every option. With `classes`, a raw SSD head computes the
    /// logits of those classes only (see [`crate::onnx::keep_ssd_classes`]): the same
    /// detections of them, about twice as fast.
    pub fn load_for(
        runtime: &Runtime,
        model: &Path,
        family: Family,
        options: &LoadOptions,
    ) -> Result<Self, DetectError> {
        let (device, threads) = (options.device, options.threads);
        let model_error = |source| DetectError::Model {
            path: model.to_path_buf(),
            source,
        };
        let layout_error = |reason: String| DetectError::Layout {
            path: model.to_path_buf(),
            family,
            reason,
        };
        let mut chosen = Device::Cpu;
        let mut cuda_unavailable = None;
        let bytes = std::fs::read(model).map_err(|e| DetectError::Layout {
            path: model.to_path_buf(),
            family,
            reason: format!("cannot read it: {e}"),
        })?;
        let (bytes, column_ids) = match (&options.classes, family) {
            (Some(classes), Family::SsdRaw) => {
                let (pruned, ids) =
                    crate::onnx::keep_ssd_classes(&bytes, classes).map_err(|reason| DetectError::Layout {
                        path: model.to_path_buf(),
                        family,
                        reason,
                    })?;
                (pruned, Some(ids))
            }
            _ => (bytes, None),
        };
        let session = {
            let cuda = match device {
                DevicePreference::Auto => try_cuda(runtime, &bytes, threads),
                DevicePreference::Cpu => Err("the CPU was asked for".to_string()),
            };
            match cuda {
                Ok(session) => {
                    chosen = Device::Cuda;
                    session
                }
                Err(reason) => {
                    cuda_unavailable = Some(reason);
                    threads
                        .apply(Session::builder(&runtime.environment).map_err(model_error)?)
                        .map_err(model_error)?
                        .commit_from_memory(&bytes)
                        .map_err(model_error)?
                }
            }
        };
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| layout_error("no input".into()))?;
        let input_name = input.name().to_string();
        let input_shape: Vec<i64> = input
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let dims = static_dims(&input_shape);
        let output_names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let output_shapes: Vec<Vec<i64>> = session
            .outputs()
            .iter()
            .map(|o| o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default())
            .collect();
        let batch = dims.first().copied().flatten();
        let (adapter, preprocess) = match family {
            Family::Yolo => {
                let [_, Some(3), Some(h), Some(w)] = dims.as_slice() else {
                    return Err(layout_error(format!(
                        "input shape {input_shape:?} is not N x 3 x H x W"
                    )));
                };
                let out = output_shapes
                    .first()
                    .ok_or_else(|| layout_error("no output".into()))?;
                let classes = match out.get(1) {
                    Some(&c) if c > 4 => c as usize - 4,
                    _ => {
                        return Err(layout_error(format!(
                            "output shape {out:?} is not N x (4 + classes) x anchors"
                        )));
                    }
                };
                let pre = Preprocess {
                    width: *w,
                    height: *h,
                    fit: Fit::Letterbox { pad: 114.0 },
                    layout: Layout::Nchw,
                    bgr: false,
                    scale: 1.0 / 255.0,
                    offset: 0.0,
                };
                (Adapter::Yolo { classes }, Some(pre))
            }
            Family::SsdRaw => {
                let [_, Some(h), Some(w), Some(3)] = dims.as_slice() else {
                    return Err(layout_error(format!(
                        "input shape {input_shape:?} is not N x H x W x 3"
                    )));
                };
                if output_shapes.len() != 2 {
                    return Err(layout_error(
                        "expected two outputs (box encodings, class logits)".into(),
                    ));
                }
                let anchors = SsdAnchorConfig::mobilenet_v2_300().anchors();
                let logits = &output_shapes[1];
                let (Some(&n), Some(&c)) = (logits.get(1), logits.get(2)) else {
                    return Err(layout_error(format!("logits shape {logits:?}")));
                };
                if n as usize != anchors.len() {
                    return Err(layout_error(format!(
                        "{n} predictions, {} anchors",
                        anchors.len()
                    )));
                }
                let pre = Preprocess {
                    width: *w,
                    height: *h,
                    fit: Fit::Stretch,
                    layout: Layout::Nhwc,
                    bgr: false,
                    scale: 2.0 / 255.0,
                    offset: -1.0,
                };
                (
                    Adapter::SsdRaw {
                        anchors,
                        classes: c as usize - 1,
                        column_ids: column_ids.clone(),
                    },
                    Some(pre),
                )
            }
            Family::SsdPostprocessed => {
                if output_names.len() != 4 {
                    return Err(layout_error(
                        "expected four outputs (num, boxes, scores, classes)".into(),
                    ));
                }
                (Adapter::SsdPostprocessed, None)
            }
        };
        Ok(Self {
            session,
            family,
            adapter,
            input: vec![0.0; preprocess.map_or(0, |p| p.len())],
            preprocess,
            input_name,
            output_names,
            batch,
            device: chosen,
            cuda_unavailable,
            resampling: Resampling::default(),
            rgb: Vec::new(),
        })
    }

    /// Why the detector runs on the CPU rather than CUDA (no GPU, a CPU-only library, ...).
    pub fn cuda_unavailable(&self) -> Option<&str> {
        self.cuda_unavailable.as_deref()
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The fixed batch size of the model, if it has one.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.batch
    }

    /// The input size of models that have one (not the post-processed SSD).
    pub fn input_size(&self) -> Option<(usize, usize)> {
        self.preprocess.map(|p| (p.width, p.height))
    }

    /// Detections of each image, in its pixel coordinates, best first.
    pub fn detect(
        &mut self,
        images: &[RgbImage<'_>],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<Detection>>, DetectError> {
        let step = self.batch.unwrap_or(images.len().max(1));
        let mut all = Vec::with_capacity(images.len());
        for chunk in images.chunks(step) {
            if chunk.len() == step {
                all.extend(self.detect_batch(chunk, options)?);
            } else {
                // A model with a fixed batch size takes only whole batches: pad with the last
                // image and drop what the padding found.
                let mut padded = chunk.to_vec();
                padded.resize(step, chunk[chunk.len() - 1]);
                all.extend(self.detect_batch(&padded, options)?.into_iter().take(chunk.len()));
            }
        }
        Ok(all)
    }

    /// Detections of a decoder's 4:2:0 frame into `out`: converted to RGB into a buffer the
    /// detector keeps, then [`detect_frame`](Self::detect_frame).
    pub fn detect_yuv420(
        &mut self,
        frame: &Yuv420Image<'_>,
        options: &DetectOptions,
        out: &mut Vec<Detection>,
    ) -> Result<(), DetectError> {
        let mut rgb = std::mem::take(&mut self.rgb);
        frame.to_rgb(&mut rgb);
        let found = self.detect_frame(
            RgbImage::new(&rgb, frame.width, frame.height).expect("converted to its size"),
            options,
            out,
        );
        self.rgb = rgb;
        found
    }

    /// Detections of one frame into `out`, in its pixel coordinates, best first. For a stream of
    /// frames: buffers and taps are reused, so after the first frame of a size only ONNX Runtime
    /// allocates.
    pub fn detect_frame(
        &mut self,
        image: RgbImage<'_>,
        options: &DetectOptions,
        out: &mut Vec<Detection>,
    ) -> Result<(), DetectError> {
        out.clear();
        let (width, height) = (image.width, image.height);
        if let Adapter::SsdPostprocessed = self.adapter {
            out.extend(self.detect_postprocessed(&image, options)?);
            return Ok(());
        }
        let placement = self.fill_input(image);
        let shape = self.input_shape();
        let Self {
            session,
            input_name,
            output_names,
            input,
            adapter,
            ..
        } = self;
        let tensor = TensorRef::from_array_view((shape, input.as_slice()))?;
        let outputs = session.run(ort::inputs![input_name.as_str() => tensor])?;
        let output = |i: usize| -> Result<(&[i64], &[f32]), DetectError> {
            let name = output_names
                .get(i)
                .ok_or_else(|| DetectError::Output(format!("missing output {i}")))?;
            let (shape, data) = outputs[name.as_str()].try_extract_tensor::<f32>()?;
            Ok((&shape[..], data))
        };
        match adapter {
            Adapter::Yolo { classes } => {
                let (shape, data) = output(0)?;
                let anchors = shape.last().copied().unwrap_or(0).max(0) as usize;
                let per = (4 + *classes) * anchors;
                let data = data
                    .get(..per)
                    .ok_or_else(|| DetectError::Output(format!("{} values, expected {per}", data.len())))?;
                decode_yolo_into(data, *classes, anchors, (width, height), &placement, options, out);
            }
            Adapter::SsdRaw {
                anchors,
                classes,
                column_ids,
            } => {
                let n = anchors.len();
                let (_, boxes) = output(0)?;
                let (_, logits) = output(1)?;
                let (nb, nl) = (n * 4, n * (*classes + 1));
                if boxes.len() < nb || logits.len() < nl {
                    return Err(DetectError::Output(format!(
                        "box encodings of {} and logits of {} values, expected {nb} and {nl}",
                        boxes.len(),
                        logits.len(),
                    )));
                }
                decode_ssd_raw_into(
                    &boxes[..nb],
                    &logits[..nl],
                    anchors,
                    (*classes, column_ids.as_deref()),
                    (width, height),
                    options,
                    out,
                );
            }
            Adapter::SsdPostprocessed => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Runs the model once on `image` and checks what it gives: outputs of the sizes the family
    /// needs, every value finite. A model that passes can serve frames of this size.
    pub fn warm_up(&mut self, image: RgbImage<'_>) -> Result<(), DetectError> {
        if let Adapter::SsdPostprocessed = self.adapter {
            return self.detect_frame(image, &DetectOptions::default(), &mut Vec::new());
        }
        self.fill_input(image);
        let expected: Vec<usize> = match &self.adapter {
            Adapter::Yolo { .. } => vec![],
            Adapter::SsdRaw { anchors, classes, .. } => {
                vec![anchors.len() * 4, anchors.len() * (classes + 1)]
            }
            Adapter::SsdPostprocessed => unreachable!("handled above"),
        };
        let shape = self.input_shape();
        let batch = shape[0];
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])?;
        for (i, name) in self.output_names.iter().enumerate() {
            let (shape, data) = outputs[name.as_str()].try_extract_tensor::<f32>()?;
            if let Some(&want) = expected.get(i)
                && data.len() != want * batch
            {
                return Err(DetectError::Output(format!(
                    "output {name} has shape {:?} ({} values), expected {want} per image",
                    &shape[..],
                    data.len(),
                )));
            }
            if let Adapter::Yolo { classes } = &self.adapter
                && i == 0
                && (shape.len() != 3 || shape[1] != 4 + *classes as i64)
            {
                return Err(DetectError::Output(format!(
                    "output {name} has shape {:?}, expected N x {} x anchors",
                    &shape[..],
                    4 + classes
                )));
            }
            if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
                return Err(DetectError::Output(format!("output {name} holds {bad}")));
            }
        }
        Ok(())
    }

    /// Writes `image` into the input tensor (every image of a fixed batch: the same one).
    fn fill_input(&mut self, image: RgbImage<'_>) -> Placement {
        let pre = self.preprocess.expect("raw families have a preprocessing");
        let per = pre.len();
        let batch = self.batch.unwrap_or(1).max(1);
        self.input.resize(per * batch, 0.0);
        let placement = pre.apply_with(image, &mut self.input[..per], &mut self.resampling);
        for k in 1..batch {
            self.input.copy_within(..per, k * per);
        }
        placement
    }

    fn input_shape(&self) -> [usize; 4] {
        let pre = self.preprocess.expect("raw families have a preprocessing");
        let batch = self.input.len() / pre.len();
        match pre.layout {
            Layout::Nchw => [batch, 3, pre.height, pre.width],
            Layout::Nhwc => [batch, pre.height, pre.width, 3],
        }
    }

    /// Runs the model on an input tensor prepared by the caller (`shape` in the model's layout)
    /// and returns every output with its shape: the raw head before any decoding, for training
    /// and for checking other implementations of the same graph.
    pub fn raw_outputs(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<RawOutput>, DetectError> {
        run_named(
            &mut self.session,
            &self.input_name,
            &self.output_names,
            input,
            shape,
        )
    }

    /// Sliced inference for small objects: the image is cut into `tile`-sized tiles overlapping
    /// by `overlap` (a fraction of the tile), each tile is detected at the model's resolution,
    /// the whole image too (for the large objects tiles cut apart), and everything is merged by
    /// class-aware NMS in image coordinates.
    pub fn detect_sliced(
        &mut self,
        image: RgbImage<'_>,
        tile: (usize, usize),
        overlap: f32,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, DetectError> {
        let (tw, th) = (tile.0.clamp(1, image.width), tile.1.clamp(1, image.height));
        let starts = |size: usize, t: usize| {
            let step = ((t as f32 * (1.0 - overlap.clamp(0.0, 0.9))).round() as usize).max(1);
            let mut v: Vec<usize> = (0..).map(|k| k * step).take_while(|&s| s + t < size).collect();
            v.push(size - t);
            v
        };
        let mut buffers = Vec::new();
        for y in starts(image.height, th) {
            for x in starts(image.width, tw) {
                let mut pixels = Vec::with_capacity(tw * th * 3);
                for row in y..y + th {
                    let start = (row * image.width + x) * 3;
                    pixels.extend_from_slice(&image.data[start..start + tw * 3]);
                }
                buffers.push((x, y, pixels));
            }
        }
        let mut views: Vec<RgbImage<'_>> = buffers
            .iter()
            .map(|(_, _, p)| RgbImage {
                data: p,
                width: tw,
                height: th,
            })
            .collect();
        views.push(image);
        let found = self.detect(&views, options)?;
        let mut merged: Vec<Detection> = Vec::new();
        for (i, detections) in found.into_iter().enumerate() {
            let (dx, dy) = buffers.get(i).map_or((0, 0), |(x, y, _)| (*x, *y));
            merged.extend(detections.into_iter().map(|d| Detection {
                bbox: d.bbox.offset(dx as f32, dy as f32),
                ..d
            }));
        }
        nms(&mut merged, options.iou_threshold, options.max_detections);
        Ok(merged)
    }

    fn detect_batch(
        &mut self,
        images: &[RgbImage<'_>],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<Detection>>, DetectError> {
        if let Adapter::SsdPostprocessed = self.adapter {
            return images
                .iter()
                .map(|image| self.detect_postprocessed(image, options))
                .collect();
        }
        let pre = self.preprocess.expect("raw families have a preprocessing");
        let per_image = pre.len();
        self.input.resize(per_image * images.len(), 0.0);
        let placements: Vec<Placement> = images
            .iter()
            .zip(self.input.chunks_exact_mut(per_image))
            .map(|(image, out)| pre.apply(*image, out))
            .collect();
        let shape = match pre.layout {
            Layout::Nchw => [images.len(), 3, pre.height, pre.width],
            Layout::Nhwc => [images.len(), pre.height, pre.width, 3],
        };
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])?;
        let mut results = Vec::with_capacity(images.len());
        match &self.adapter {
            Adapter::Yolo { classes } => {
                let (shape, data) = outputs[self.output_names[0].as_str()].try_extract_tensor::<f32>()?;
                let anchors = *shape
                    .last()
                    .ok_or_else(|| DetectError::Output("empty shape".into()))?
                    as usize;
                let per = (4 + classes) * anchors;
                for (i, (image, placement)) in images.iter().zip(&placements).enumerate() {
                    let out = &data[i * per..(i + 1) * per];
                    results.push(decode_yolo(out, *classes, anchors, image, placement, options));
                }
            }
            Adapter::SsdRaw {
                anchors,
                classes,
                column_ids,
            } => {
                let (_, boxes) = outputs[self.output_names[0].as_str()].try_extract_tensor::<f32>()?;
                let (_, logits) = outputs[self.output_names[1].as_str()].try_extract_tensor::<f32>()?;
                let n = anchors.len();
                for (i, image) in images.iter().enumerate() {
                    let b = &boxes[i * n * 4..(i + 1) * n * 4];
                    let l = &logits[i * n * (classes + 1)..(i + 1) * n * (classes + 1)];
                    let mut found = Vec::new();
                    decode_ssd_raw_into(
                        b,
                        l,
                        anchors,
                        (*classes, column_ids.as_deref()),
                        (image.width, image.height),
                        options,
                        &mut found,
                    );
                    results.push(found);
                }
            }
            Adapter::SsdPostprocessed => unreachable!("handled above"),
        }
        Ok(results)
    }

    fn detect_postprocessed(
        &mut self,
        image: &RgbImage<'_>,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, DetectError> {
        let tensor = TensorRef::from_array_view(([1, image.height, image.width, 3], image.data))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])?;
        let get = |name: &str| outputs[name].try_extract_tensor::<f32>().map(|(_, d)| d.to_vec());
        let (mut num, mut boxes, mut scores, mut classes) = (None, None, None, None);
        for name in &self.output_names {
            let values = get(name)?;
            match name.trim_end_matches(":0") {
                "num_detections" => num = Some(values),
                "detection_boxes" => boxes = Some(values),
                "detection_scores" => scores = Some(values),
                "detection_classes" => classes = Some(values),
                other => return Err(DetectError::Output(format!("unknown output {other}"))),
            }
        }
        let missing = || DetectError::Output("missing a detection output".into());
        let (num, boxes, scores, classes) = (
            num.ok_or_else(missing)?,
            boxes.ok_or_else(missing)?,
            scores.ok_or_else(missing)?,
            classes.ok_or_else(missing)?,
        );
        let count = (num.first().copied().unwrap_or(0.0) as usize).min(scores.len());
        let (w, h) = (image.width as f32, image.height as f32);
        let mut detections: Vec<Detection> = (0..count)
            .filter(|&i| scores[i] >= options.min_score)
            .map(|i| Detection {
                bbox: BBox::new(
                    boxes[4 * i + 1] * w,
                    boxes[4 * i] * h,
                    boxes[4 * i + 3] * w,
                    boxes[4 * i + 2] * h,
                ),
                class_id: classes[i].round() as u32,
                score: scores[i],
            })
            .filter(|d| wanted(d.class_id, options))
            .collect();
        // The graph already suppressed overlaps (its own IoU); keep its order, cap the count.
        detections.truncate(options.max_detections);
        Ok(detections)
    }
}

fn wanted(class_id: u32, options: &DetectOptions) -> bool {
    options.classes.as_ref().is_none_or(|c| c.contains(&class_id))
}

/// Runs `session` on one f32 input and returns the named outputs with their shapes.
pub(crate) fn run_named(
    session: &mut Session,
    input_name: &str,
    output_names: &[String],
    input: &[f32],
    shape: [usize; 4],
) -> Result<Vec<RawOutput>, DetectError> {
    let tensor = TensorRef::from_array_view((shape, input))?;
    let outputs = session.run(ort::inputs![input_name => tensor])?;
    output_names
        .iter()
        .map(|name| {
            let (shape, data) = outputs[name.as_str()].try_extract_tensor::<f32>()?;
            Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
        })
        .collect()
}

fn try_cuda(runtime: &Runtime, model: &[u8], threads: Threads) -> Result<Session, String> {
    #[cfg(feature = "cuda")]
    {
        let builder = threads
            .apply(Session::builder(&runtime.environment).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| e.to_string())?;
        return builder.commit_from_memory(model).map_err(|e| e.to_string());
    }
    #[allow(unreachable_code)]
    {
        let _ = (runtime, model, threads);
        Err("built without the `cuda` feature".into())
    }
}

/// YOLO output of one image: `(4 + classes) x anchors`, row-major.
pub fn decode_yolo(
    out: &[f32],
    classes: usize,
    anchors: usize,
    image: &RgbImage<'_>,
    placement: &Placement,
    options: &DetectOptions,
) -> Vec<Detection> {
    let mut detections = Vec::new();
    decode_yolo_into(
        out,
        classes,
        anchors,
        (image.width, image.height),
        placement,
        options,
        &mut detections,
    );
    detections
}

fn decode_yolo_into(
    out: &[f32],
    classes: usize,
    anchors: usize,
    (width, height): (usize, usize),
    placement: &Placement,
    options: &DetectOptions,
    detections: &mut Vec<Detection>,
) {
    let (w, h) = (width as f32, height as f32);
    for j in 0..anchors {
        let mut best = 0;
        let mut score = f32::MIN;
        for c in 0..classes {
            let s = out[(4 + c) * anchors + j];
            if s > score {
                score = s;
                best = c;
            }
        }
        if score < options.min_score {
            continue;
        }
        let Some(class_id) = labels::coco_id_of_yolo_index(best) else {
            continue;
        };
        if !wanted(class_id, options) {
            continue;
        }
        let (cx, cy, bw, bh) = (
            out[j],
            out[anchors + j],
            out[2 * anchors + j],
            out[3 * anchors + j],
        );
        let (x0, y0) = placement.to_image(cx - bw / 2.0, cy - bh / 2.0);
        let (x1, y1) = placement.to_image(cx + bw / 2.0, cy + bh / 2.0);
        detections.push(Detection {
            bbox: BBox::new(x0, y0, x1, y1).clip(w, h),
            class_id,
            score,
        });
    }
    nms(detections, options.iou_threshold, options.max_detections);
}

/// SSD raw head of one image: box encodings `anchors x 4` and logits `anchors x (1 + classes)`;
/// sigmoid scores, background (class 0) dropped, every class above the threshold considered.
pub fn decode_ssd_raw(
    boxes: &[f32],
    logits: &[f32],
    anchors: &[Anchor],
    classes: usize,
    image: &RgbImage<'_>,
    options: &DetectOptions,
) -> Vec<Detection> {
    let mut detections = Vec::new();
    decode_ssd_raw_into(
        boxes,
        logits,
        anchors,
        (classes, None),
        (image.width, image.height),
        options,
        &mut detections,
    );
    detections
}

/// `columns`: the classes (columns less background) of the logits, and the class id of each
/// column when it is not the column itself.
fn decode_ssd_raw_into(
    boxes: &[f32],
    logits: &[f32],
    anchors: &[Anchor],
    (classes, column_ids): (usize, Option<&[u32]>),
    (width, height): (usize, usize),
    options: &DetectOptions,
    detections: &mut Vec<Detection>,
) {
    let (w, h) = (width as f32, height as f32);
    // The sigmoid is monotonic: a logit below the threshold's logit cannot pass, and most of the
    // 1917 x 90 logits are far below it, so they are skipped without an exp.
    let min_logit = logit(options.min_score);
    for (j, anchor) in anchors.iter().enumerate() {
        let row = &logits[j * (classes + 1)..(j + 1) * (classes + 1)];
        let mut decoded: Option<BBox> = None;
        for (c, &logit) in row.iter().enumerate().skip(1) {
            if logit < min_logit {
                continue;
            }
            let score = 1.0 / (1.0 + (-logit).exp());
            let c = column_ids.map_or(c as u32, |ids| ids[c]) as usize;
            if score < options.min_score || !wanted(c as u32, options) || labels::name(c as u32).is_none() {
                continue;
            }
            let bbox = *decoded.get_or_insert_with(|| {
                let code = [boxes[4 * j], boxes[4 * j + 1], boxes[4 * j + 2], boxes[4 * j + 3]];
                let [ymin, xmin, ymax, xmax] = anchors::decode(code, anchor);
                BBox::new(
                    xmin.clamp(0.0, 1.0) * w,
                    ymin.clamp(0.0, 1.0) * h,
                    xmax.clamp(0.0, 1.0) * w,
                    ymax.clamp(0.0, 1.0) * h,
                )
            });
            detections.push(Detection {
                bbox,
                class_id: c as u32,
                score,
            });
        }
    }
    nms(detections, options.iou_threshold, options.max_detections);
}

/// The logit whose sigmoid is `p`, nudged down so that rounding never skips a score at `p`
/// (the exact test on the score follows).
fn logit(p: f32) -> f32 {
    if p <= 0.0 {
        return f32::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f32::INFINITY;
    }
    let l = (p / (1.0 - p)).ln();
    l - 1e-3 * (1.0 + l.abs())
}
