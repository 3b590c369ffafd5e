//! The student on the camera's node: it runs on the frames the capture pipeline decodes anyway
//! (no second decode), on a thread of its own, and publishes every inferred frame's detections
//! (metrics, the latest frame, a broadcast for Server-Sent Events and MQTT).
//!
//! Frames reach it through a short queue: a live stream never waits for inference (when the
//! queue is full the oldest waiting frame is dropped, and counted), a file waits, so that a file
//! run infers every frame. A few frames rather than one, because decoders hand frames over in
//! bursts (B-frames come out in pairs and threes) that a steady inference rate absorbs. A new model is loaded, checked on a frame and queued by
//! [`ModelLoader`] on another thread; the inference thread switches to it between two frames, so
//! no frame goes without a model and the stream never stops.
//!
//! Same process as capture rather than a second container: the decoded frame is shared by
//! handing its buffers over, which a second container could only do through shared memory and
//! a protocol of its own, and one pod keeps one view of the stream (frame numbers, times).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use autotuner_detect::{
    DetectError, DetectOptions, Detection, Detector, DevicePreference, Family, LoadOptions, RgbImage,
    Runtime, Threads,
};
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};

use crate::metrics::Metrics;
use crate::source::Frame;

/// What the edge runs and publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSettings {
    /// COCO category ids to publish (the CameraTuning's classes).
    pub classes: Vec<u32>,
    /// Detections below this score are not published.
    pub min_score: f32,
    /// At most this many frames per second are inferred (by stream time); `None`: all it can.
    pub max_fps: Option<f64>,
    pub device: DevicePreference,
    /// ONNX Runtime threads of the student's session (0: one per core).
    pub threads: usize,
    /// Frames kept for slow subscribers (SSE, MQTT) before the oldest are dropped.
    pub broadcast_capacity: usize,
    /// Frames waiting for inference before the oldest is dropped (live streams).
    pub queue: usize,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            classes: vec![1],
            min_score: 0.5,
            max_fps: None,
            device: DevicePreference::Auto,
            threads: 0,
            broadcast_capacity: 256,
            queue: 3,
        }
    }
}

/// Which model: the iteration that produced it (0: the off-the-shelf student) and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelId {
    pub version: u32,
    pub uri: String,
}

/// One detected object, in frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectedObject {
    pub class: &'static str,
    pub class_id: u32,
    pub score: f32,
    /// `[x0, y0, x1, y1]` in the frame's pixels.
    pub bbox: [f32; 4],
}

/// The detections of one inferred frame, as every output publishes them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameDetections {
    /// The frame's index in the stream (decoded frames before it).
    pub frame: u64,
    /// Stream time in milliseconds: a file's presentation time, a live stream's wall-clock time
    /// of decoding (since the Unix epoch).
    pub time_ms: i64,
    pub width: u32,
    pub height: u32,
    pub model_version: u32,
    pub inference_ms: f64,
    pub objects: Vec<DetectedObject>,
}

/// One published frame: the detections and their JSON, serialised once for every subscriber.
#[derive(Debug)]
pub struct Published {
    pub detections: FrameDetections,
    pub json: String,
}

/// A model that loaded and passed its check.
#[derive(Debug)]
pub struct LoadedModel {
    pub id: ModelId,
    pub detector: Detector,
}

/// A model the edge refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: ModelId,
    pub reason: String,
    pub at: SystemTime,
    /// The model could not be fetched and is tried again (a store or server may come back).
    pub retrying: bool,
}

/// What the edge serves, for the status report and the HTTP endpoints.
#[derive(Debug, Default)]
struct ServingState {
    serving: Option<(ModelId, SystemTime)>,
    refused: Option<Refusal>,
    /// The last frame size seen: new models are checked on a frame of this size.
    frame_size: Option<(usize, usize)>,
}

/// The shared face of edge inference: the hand-over, the model switch, the outputs.
#[derive(Debug)]
pub struct Edge {
    settings: EdgeSettings,
    slot: Mutex<Slot>,
    changed: Condvar,
    pending: Mutex<Option<LoadedModel>>,
    state: Mutex<ServingState>,
    /// Woken when the served or refused model changes (the status report goes out at once).
    pub state_changed: Notify,
    latest: watch::Sender<Option<Arc<Published>>>,
    stream: broadcast::Sender<Arc<Published>>,
    metrics: Metrics,
    last_offered_ms: AtomicU64,
    /// Model loads under way: a file's frames wait for the first model instead of going
    /// without (a live stream's do not wait).
    loading: AtomicU64,
    /// Frames published so far.
    published: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    waiting: std::collections::VecDeque<Frame>,
    /// Frames inference is done with, back to the decoder's pool.
    done: Vec<Frame>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the edge down with it: the data is plain state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Edge {
    pub fn new(settings: EdgeSettings, metrics: Metrics) -> Arc<Self> {
        let (latest, _) = watch::channel(None);
        let (stream, _) = broadcast::channel(settings.broadcast_capacity.max(1));
        Arc::new(Self {
            settings,
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
            pending: Mutex::new(None),
            state: Mutex::new(ServingState::default()),
            state_changed: Notify::new(),
            latest,
            stream,
            metrics,
            last_offered_ms: AtomicU64::new(u64::MAX),
            loading: AtomicU64::new(0),
            published: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    /// Hands a frame to inference; `recycle` gets back the frames nobody needs any more. A live
    /// frame pushes out the oldest waiting one when the queue is full (dropped, counted); a file's
    /// frame waits for room.
    /// Frames within `1 / max_fps` of the last one offered are skipped (counted).
    pub fn offer(&self, frame: Frame, time_ms: i64, mut recycle: impl FnMut(Frame)) {
        if let Some(fps) = self.settings.max_fps {
            let last = self.last_offered_ms.load(Ordering::Relaxed);
            let due = last == u64::MAX || (time_ms as f64 - last as f64) >= 1000.0 / fps - 0.5;
            if !due {
                self.metrics.edge_frames.with_label_values(&["skipped"]).inc();
                recycle(frame);
                return;
            }
            self.last_offered_ms
                .store(time_ms.max(0) as u64, Ordering::Relaxed);
        }
        let live = frame.live;
        let mut slot = lock(&self.slot);
        let capacity = self.settings.queue.max(1);
        while !live && slot.waiting.len() >= capacity && !slot.closed {
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        for done in slot.done.drain(..) {
            recycle(done);
        }
        if slot.closed {
            drop(slot);
            recycle(frame);
            return;
        }
        if slot.waiting.len() >= capacity
            && let Some(stale) = slot.waiting.pop_front()
        {
            self.metrics.edge_frames.with_label_values(&["dropped"]).inc();
            recycle(stale);
        }
        slot.waiting.push_back(frame);
        self.changed.notify_all();
    }

    /// No more frames: the inference thread ends once it has finished the one in hand.
    pub fn close(&self) {
        lock(&self.slot).closed = true;
        self.changed.notify_all();
    }

    fn take(&self) -> Option<Frame> {
        let mut slot = lock(&self.slot);
        loop {
            if let Some(frame) = slot.waiting.pop_front() {
                self.changed.notify_all();
                return Some(frame);
            }
            if slot.closed {
                return None;
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, frame: Frame) {
        let mut slot = lock(&self.slot);
        if slot.done.len() < self.settings.queue.max(1) + 2 {
            slot.done.push(frame);
        }
        self.changed.notify_all();
    }

    /// Queues a checked model; the inference thread switches to it before its next frame.
    pub fn stage(&self, model: LoadedModel) {
        if let Some(superseded) = lock(&self.pending).replace(model) {
            tracing::info!(
                version = superseded.id.version,
                "a newer model superseded one not yet serving"
            );
        }
    }

    /// Records a refused model (the one serving keeps serving).
    pub fn refuse(&self, id: ModelId, reason: String, retrying: bool) {
        tracing::warn!(
            version = id.version,
            uri = %autotuner_store::redact_uri(&id.uri),
            reason,
            "model refused; the model serving now keeps serving"
        );
        self.metrics.model_loads.with_label_values(&["refused"]).inc();
        lock(&self.state).refused = Some(Refusal {
            id,
            reason,
            at: SystemTime::now(),
            retrying,
        });
        self.state_changed.notify_waiters();
    }

    /// The model serving now and since when.
    pub fn serving(&self) -> Option<(ModelId, SystemTime)> {
        lock(&self.state).serving.clone()
    }

    pub fn refused(&self) -> Option<Refusal> {
        lock(&self.state).refused.clone()
    }

    /// The size of the last frame inferred, if any.
    pub fn frame_size(&self) -> Option<(usize, usize)> {
        lock(&self.state).frame_size
    }

    /// Frames published since the start.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// The latest inferred frame.
    pub fn latest(&self) -> Option<Arc<Published>> {
        self.latest.borrow().clone()
    }

    /// Every inferred frame from now on; a subscriber that falls more than the broadcast
    /// capacity behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.stream.subscribe()
    }

    /// Starts the inference thread; it ends after [`Edge::close`].
    pub fn spawn(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let edge = self.clone();
        std::thread::Builder::new()
            .name("infer".into())
            .spawn(move || edge.run())
            .expect("spawn the inference thread")
    }

    fn switch_model(&self, current: &mut Option<LoadedModel>) {
        let Some(next) = lock(&self.pending).take() else {
            return;
        };
        let id = next.id.clone();
        if let Some(old) = current.replace(next) {
            let _ = self.metrics.model_info.remove_label_values(&[
                &old.id.version.to_string(),
                &autotuner_store::redact_uri(&old.id.uri),
            ]);
            // Releasing a session takes a while: not on the frame path.
            std::thread::spawn(move || drop(old));
        }
        self.metrics
            .model_info
            .with_label_values(&[&id.version.to_string(), &autotuner_store::redact_uri(&id.uri)])
            .set(1);
        self.metrics.model_loads.with_label_values(&["loaded"]).inc();
        tracing::info!(version = id.version, uri = %autotuner_store::redact_uri(&id.uri), "serving a new model");
        let mut state = lock(&self.state);
        if state.refused.as_ref().is_some_and(|r| r.id == id) {
            state.refused = None;
        }
        state.serving = Some((id, SystemTime::now()));
        drop(state);
        self.state_changed.notify_waiters();
    }

    fn run(&self) {
        let options = DetectOptions {
            min_score: self.settings.min_score,
            classes: Some(self.settings.classes.clone()),
            ..DetectOptions::default()
        };
        // Counters per published class, looked up once.
        let per_class: Vec<(u32, IntCounter, prometheus::IntGauge)> = self
            .settings
            .classes
            .iter()
            .map(|&id| {
                let name = autotuner_detect::labels::name(id).unwrap_or("unknown");
                (
                    id,
                    self.metrics.detections.with_label_values(&[name]),
                    self.metrics.objects.with_label_values(&[name]),
                )
            })
            .collect();
        let inferred = self.metrics.edge_frames.with_label_values(&["inferred"]);
        let no_model = self.metrics.edge_frames.with_label_values(&["no_model"]);
        let failed = self.metrics.edge_frames.with_label_values(&["error"]);
        let mut current: Option<LoadedModel> = None;
        let mut found: Vec<Detection> = Vec::new();
        let mut last_error: Option<Instant> = None;
        while let Some(frame) = self.take() {
            if current.is_none() && !frame.live {
                while lock(&self.pending).is_none() && self.loading.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.switch_model(&mut current);
            {
                let mut state = lock(&self.state);
                state.frame_size = Some((frame.width, frame.height));
            }
            let Some(model) = current.as_mut() else {
                no_model.inc();
                self.give_back(frame);
                continue;
            };
            let started = Instant::now();
            let result = frame
                .image()
                .map_err(|e| DetectError::Output(e.to_string()))
                .and_then(|image| model.detector.detect_yuv420(&image, &options, &mut found));
            let elapsed = started.elapsed();
            if let Err(e) = result {
                failed.inc();
                // One line per minute at most: a broken stream must not flood the log.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "inference failed on a frame");
                    last_error = Some(Instant::now());
                }
                self.give_back(frame);
                continue;
            }
            inferred.inc();
            self.metrics.inference_seconds.observe(elapsed.as_secs_f64());
            for (id, detections, objects) in &per_class {
                let n = found.iter().filter(|d| d.class_id == *id).count();
                detections.inc_by(n as u64);
                objects.set(n as i64);
            }
            let detections = FrameDetections {
                frame: frame.index,
                time_ms: frame_time_ms(&frame),
                width: frame.width as u32,
                height: frame.height as u32,
                model_version: model.id.version,
                inference_ms: elapsed.as_secs_f64() * 1e3,
                objects: found
                    .iter()
                    .map(|d| DetectedObject {
                        class: autotuner_detect::labels::name(d.class_id).unwrap_or("unknown"),
                        class_id: d.class_id,
                        score: d.score,
                        bbox: [d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1],
                    })
                    .collect(),
            };
            self.give_back(frame);
            let json = serde_json::to_string(&detections).expect("detections serialise");
            let published = Arc::new(Published { detections, json });
            self.latest.send_replace(Some(published.clone()));
            // No subscriber is not an error.
            let _ = self.stream.send(published);
            self.published.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Stream time: a file's presentation time (or 25 fps when it has none), a live stream's
/// wall-clock time.
pub fn frame_time_ms(frame: &Frame) -> i64 {
    if frame.live {
        frame.decoded_at_ms as i64
    } else {
        frame.pts_ms.unwrap_or(frame.index as i64 * 40)
    }
}

/// What became of a model [`ModelLoader::load`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// It passed its check and serves from the next frame.
    Staged,
    /// It could not be fetched (worth another try: a store or server may be back later).
    Unreachable,
    /// It does not load or fails its check (the same file never will).
    Refused,
}

/// Fetches, loads and checks models, one at a time, off the frame path; what passes is staged on
/// the [`Edge`], what fails is refused there.
#[derive(Debug, Clone)]
pub struct ModelLoader {
    edge: Arc<Edge>,
    runtime: Result<Runtime, String>,
    family: Family,
    s3: autotuner_store::S3Options,
    dir: PathBuf,
}

impl ModelLoader {
    /// `runtime` is ONNX Runtime's library; when it cannot be loaded every model is refused with
    /// that reason (capture goes on without inference). Downloads go to `dir`.
    pub fn new(
        edge: Arc<Edge>,
        onnxruntime: Option<&Path>,
        family: Family,
        s3: autotuner_store::S3Options,
        dir: PathBuf,
    ) -> Self {
        let runtime = match onnxruntime {
            Some(path) => Runtime::load(path).map_err(|e| e.to_string()),
            None => Err(format!(
                "no ONNX Runtime library: set {} or --onnxruntime",
                autotuner_api::contract::ENV_ONNXRUNTIME
            )),
        };
        Self {
            edge,
            runtime,
            family,
            s3,
            dir,
        }
    }

    /// The ONNX Runtime and model family models load with (the drift check scores with them).
    pub fn runtime(&self) -> Result<Runtime, String> {
        self.runtime.clone()
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Fetches a model as the loader does (same folder, same store settings).
    pub async fn fetch(&self, uri: &str) -> Result<PathBuf, String> {
        autotuner_store::fetch_model(uri, None, &self.s3, &self.dir)
            .await
            .map_err(|e| e.to_string())
    }

    /// Fetches, loads and checks `id`, then stages it; on failure the serving model stays and
    /// the refusal is recorded.
    pub async fn load(&self, id: ModelId) -> Loaded {
        self.edge.loading.fetch_add(1, Ordering::SeqCst);
        let outcome = self.fetch_and_check(id).await;
        self.edge.loading.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    async fn fetch_and_check(&self, id: ModelId) -> Loaded {
        let path = match autotuner_store::fetch_model(&id.uri, None, &self.s3, &self.dir).await {
            Ok(path) => path,
            Err(e) => {
                self.edge
                    .refuse(id, format!("could not fetch the model: {e}"), true);
                return Loaded::Unreachable;
            }
        };
        let (runtime, family, settings, size) = (
            self.runtime.clone(),
            self.family,
            self.edge.settings.clone(),
            self.edge.frame_size().unwrap_or((640, 480)),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let runtime = runtime?;
            check_model(&runtime, &path, family, &settings, size)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the model check panicked: {e}")));
        match checked {
            Ok(detector) => {
                self.edge.stage(LoadedModel { id, detector });
                Loaded::Staged
            }
            Err(reason) => {
                self.edge.refuse(id, reason, false);
                Loaded::Refused
            }
        }
    }
}

/// Loads `path` and runs it on a mid-grey frame of the stream's size: it must load as a
/// `family` detector and give outputs of the right shapes, all finite. The run also warms the
/// session up, so the first real frame after the switch is not slower than the others.
pub fn check_model(
    runtime: &Runtime,
    path: &Path,
    family: Family,
    settings: &EdgeSettings,
    (width, height): (usize, usize),
) -> Result<Detector, String> {
    let options = LoadOptions {
        device: settings.device,
        threads: Threads {
            intra_op: settings.threads,
            spinning: false,
        },
        // Only the classes the camera publishes are computed.
        classes: Some(settings.classes.clone()),
    };
    let mut detector = Detector::load_for(runtime, path, family, &options)
        .map_err(|e| format!("the model does not load: {e}"))?;
    let grey = vec![128u8; width * height * 3];
    let frame = RgbImage::new(&grey, width, height).map_err(|e| e.to_string())?;
    detector
        .warm_up(frame)
        .map_err(|e| format!("the model failed its check on a frame: {e}"))?;
    Ok(detector)
}
