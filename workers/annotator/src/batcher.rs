//! Dynamic batching: requests queue (bounded) for one inference thread, which takes as many as
//! arrive within `max_wait` of the first, up to `max_batch` images, and runs them together. A
//! full queue is refused at once (the server answers 429), never buffered without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use autotuner_detect::{DetectOptions, Detection, Detector, RgbImage};
use tokio::sync::oneshot;

use crate::images::RgbBuffer;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Requests that may wait; more are refused.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            queue: 32,
        }
    }
}

/// What a request gets back.
#[derive(Debug)]
pub struct Labelled {
    pub detections: Vec<Vec<Detection>>,
    pub inference: Duration,
    pub batch_images: usize,
}

struct Job {
    images: Vec<RgbBuffer>,
    options: DetectOptions,
    reply: oneshot::Sender<Result<Labelled, String>>,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: retry later.
    QueueFull,
    /// The inference thread is gone: the service is broken (readiness says so).
    Stopped,
    /// An image without pixels, or whose buffer does not match its size.
    BadImage,
}

/// The handle requests go through; dropping every clone stops the inference thread once the
/// queue is drained.
#[derive(Debug, Clone)]
pub struct Batcher {
    sender: SyncSender<Job>,
    metrics: Metrics,
    alive: Arc<AtomicBool>,
}

/// Marks the batcher dead when the inference thread ends, however it ends (a panic included).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Batcher {
    pub fn start(mut detector: Detector, config: BatchConfig, metrics: Metrics) -> (Batcher, JoinHandle<()>) {
        let (sender, receiver) = mpsc::sync_channel::<Job>(config.queue);
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let thread_metrics = metrics.clone();
        let worker = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let _guard = guard;
                let metrics = thread_metrics;
                while let Ok(first) = receiver.recv() {
                    metrics.queue_depth.dec();
                    let mut jobs = vec![first];
                    let mut images = jobs[0].images.len();
                    let deadline = Instant::now() + config.max_wait;
                    while images < config.max_batch {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match receiver.recv_timeout(left) {
                            Ok(job) => {
                                metrics.queue_depth.dec();
                                images += job.images.len();
                                jobs.push(job);
                            }
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    // Requests that gave up (timeout, client gone) are not worth the model's time.
                    jobs.retain(|j| !j.reply.is_closed());
                    if !jobs.is_empty() {
                        run_batch(&mut detector, jobs, &metrics);
                    }
                }
            })
            .expect("spawn the inference thread");
        (
            Batcher {
                sender,
                metrics,
                alive,
            },
            worker,
        )
    }

    /// Whether the inference thread is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues `images` for labelling; the receiver gets the detections (one list per image).
    pub fn submit(
        &self,
        images: Vec<RgbBuffer>,
        options: DetectOptions,
    ) -> Result<oneshot::Receiver<Result<Labelled, String>>, Refused> {
        let whole = |b: &RgbBuffer| {
            b.width > 0 && b.height > 0 && b.data.len() as u64 == b.width as u64 * b.height as u64 * 3
        };
        if images.is_empty() || !images.iter().all(whole) {
            return Err(Refused::BadImage);
        }
        let (reply, receiver) = oneshot::channel();
        self.metrics.queue_depth.inc();
        match self.sender.try_send(Job {
            images,
            options,
            reply,
        }) {
            Ok(()) => Ok(receiver),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => Refused::QueueFull,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }
}

/// Runs the jobs' images in one call with the loosest score threshold, no class filter and no
/// cap, then gives each job what its own options keep. (Class-aware greedy NMS at a lower score
/// threshold, filtered afterwards, keeps exactly what NMS at the higher threshold keeps; the cap
/// and the class filter apply per job, so a job's answer does not depend on its batch mates.)
fn run_batch(detector: &mut Detector, jobs: Vec<Job>, metrics: &Metrics) {
    let loosest = DetectOptions {
        min_score: jobs
            .iter()
            .map(|j| j.options.min_score)
            .fold(f32::INFINITY, f32::min),
        iou_threshold: jobs[0].options.iou_threshold,
        max_detections: usize::MAX,
        classes: None,
    };
    let images: Vec<RgbImage<'_>> = jobs
        .iter()
        .flat_map(|j| j.images.iter())
        .filter_map(|b| RgbImage::new(&b.data, b.width as usize, b.height as usize).ok())
        .collect();
    // `submit` admits only whole images, so none was dropped above.
    debug_assert_eq!(images.len(), jobs.iter().map(|j| j.images.len()).sum::<usize>());
    let started = Instant::now();
    let result = detector.detect(&images, &loosest);
    let inference = started.elapsed();
    let count = images.len();
    metrics.inference_seconds.observe(inference.as_secs_f64());
    metrics.batch_images.observe(count as f64);
    metrics.images.inc_by(count as u64);
    drop(images);
    match result {
        Ok(mut all) => {
            let mut rest = all.drain(..);
            for job in jobs {
                let mine: Vec<Vec<Detection>> = rest
                    .by_ref()
                    .take(job.images.len())
                    .map(|found| {
                        found
                            .into_iter()
                            .filter(|d| d.score >= job.options.min_score)
                            .filter(|d| {
                                job.options
                                    .classes
                                    .as_ref()
                                    .is_none_or(|c| c.contains(&d.class_id))
                            })
                            .take(job.options.max_detections)
                            .collect()
                    })
                    .collect();
                // A request that gave up (timeout, disconnect) no longer listens: nothing to do.
                let _ = job.reply.send(Ok(Labelled {
                    detections: mine,
                    inference,
                    batch_images: count,
                }));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "inference failed");
            for job in jobs {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
    }
}
