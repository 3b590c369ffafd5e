//! Dynamic batching with fair queuing: requests wait (bounded) for one inference thread, which
//! takes as many as arrive within `max_wait` of the first, up to `max_batch` images, and runs them
//! together. One annotator serves many cameras, so the queue is shared between callers by the
//! images they have been served (start-time fair queuing): a camera that sends ten times as much
//! as the others waits behind them, not they behind it. A full queue refuses the newest request
//! of the caller with the most waiting (the server answers 429), so the refusals go to the
//! heaviest caller; nothing is buffered without bound.
//!
//! A batch also stops growing where its expected inference time would pass `max_batch_time`
//! (the time per image learnt from the batches run so far): a request that arrives while a batch
//! runs waits at most about that long for it. On a GPU, where a batch of eight costs little more
//! than one image, the bound is `max_batch`; on a CPU, where each image costs its own time and
//! batching gains next to nothing, a batch is a request or two, and a quiet camera's request no
//! longer waits behind eight of a busy one's images (`benches/fairness.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
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
    /// A batch takes no further request once its expected inference time would pass this (its
    /// first request always runs, however large).
    pub max_batch_time: Duration,
    /// Requests that may wait, all callers together; beyond, the heaviest caller's newest is
    /// refused.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            max_batch_time: Duration::from_millis(250),
            queue: 32,
        }
    }
}

/// What the inference thread runs: the teacher (`Detector`). A trait so that the fuzz harness can
/// drive the whole HTTP API without spending its time in a model.
pub trait Model: Send + 'static {
    /// One list of detections per image, with `options`' threshold (no class filter, no cap).
    fn detect(
        &mut self,
        images: &[RgbImage<'_>],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<Detection>>, String>;
}

impl Model for Detector {
    fn detect(
        &mut self,
        images: &[RgbImage<'_>],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<Detection>>, String> {
        Detector::detect(self, images, options).map_err(|e| e.to_string())
    }
}

/// What a request gets back.
#[derive(Debug)]
pub struct Labelled {
    pub detections: Vec<Vec<Detection>>,
    pub inference: Duration,
    pub batch_images: usize,
}

/// Why a queued request got no labels.
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// The model failed on the batch.
    Inference(String),
    /// The queue filled up and this was the newest request of the caller with the most waiting.
    Shed,
}

/// Who a request comes from (a camera, or its address): the unit the queue is fair between.
pub type Caller = Arc<str>;

struct Job {
    caller: Caller,
    images: Vec<RgbBuffer>,
    options: DetectOptions,
    reply: oneshot::Sender<Result<Labelled, Failed>>,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full and this caller has the most waiting: retry later.
    QueueFull,
    /// The inference thread is gone: the service is broken (readiness says so).
    Stopped,
    /// An image without pixels, or whose buffer does not match its size.
    BadImage,
}

/// The waiting requests of one caller.
#[derive(Debug)]
struct Waiting<J> {
    jobs: VecDeque<(u64, J)>,
    /// Images served to this caller while it had requests waiting (its virtual time).
    served: u64,
}

/// The fair queue, apart from threads and channels (its decisions are tested alone). `J` is a
/// job; `size` gives its images.
#[derive(Debug)]
struct FairQueue<J> {
    /// Callers with requests waiting; a caller leaves when its last request is taken, so an idle
    /// caller banks no credit: it comes back at the virtual time of those still waiting.
    callers: HashMap<Caller, Waiting<J>>,
    len: usize,
    capacity: usize,
    /// Arrival order, the tie-break between callers served alike.
    arrivals: u64,
}

impl<J> FairQueue<J> {
    fn new(capacity: usize) -> Self {
        Self {
            callers: HashMap::new(),
            len: 0,
            capacity: capacity.max(1),
            arrivals: 0,
        }
    }

    /// Queues `job` for `caller`. When the queue is full, the caller with the most waiting gives
    /// up its newest request (returned in `Ok(Some(shed))`), unless that would leave it with no
    /// more than this caller then has: this request is refused instead (`Err`).
    fn push(&mut self, caller: &Caller, job: J) -> Result<Option<J>, J> {
        let mine = self.callers.get(caller).map_or(0, |w| w.jobs.len());
        let mut shed = None;
        if self.len >= self.capacity {
            let heaviest = self
                .callers
                .iter()
                .max_by_key(|(_, w)| (w.jobs.len(), w.served))
                .map(|(c, w)| (c.clone(), w.jobs.len()))
                .expect("a full queue has callers");
            // Shedding one of the heaviest's for one of ours must leave us lighter than it was.
            if heaviest.1 <= mine + 1 {
                return Err(job);
            }
            let waiting = self.callers.get_mut(&heaviest.0).expect("present");
            shed = waiting.jobs.pop_back().map(|(_, j)| j);
            self.len -= 1;
            if waiting.jobs.is_empty() {
                self.callers.remove(&heaviest.0);
            }
        }
        let now = self.virtual_time();
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.callers
            .entry(caller.clone())
            .or_insert_with(|| Waiting {
                jobs: VecDeque::new(),
                served: now,
            })
            .jobs
            .push_back((arrival, job));
        self.len += 1;
        Ok(shed)
    }

    /// The least virtual time among the callers waiting (0 when none waits).
    fn virtual_time(&self) -> u64 {
        self.callers.values().map(|w| w.served).min().unwrap_or(0)
    }

    /// The next request: the oldest of the caller served least so far, charged `size` images.
    fn pop(&mut self, size: impl Fn(&J) -> usize) -> Option<J> {
        self.pop_if(size, |_| true)
    }

    /// [`FairQueue::pop`], when the next request `fits`; `None` (and the queue unchanged) when
    /// it does not: it stays first for the next batch.
    fn pop_if(&mut self, size: impl Fn(&J) -> usize, fits: impl Fn(&J) -> bool) -> Option<J> {
        let next = self
            .callers
            .iter()
            .min_by_key(|(_, w)| (w.served, w.jobs.front().map_or(u64::MAX, |(a, _)| *a)))
            .map(|(c, _)| c.clone())?;
        let waiting = self.callers.get_mut(&next).expect("present");
        if !waiting.jobs.front().is_some_and(|(_, job)| fits(job)) {
            return None;
        }
        let (_, job) = waiting.jobs.pop_front().expect("callers in the map have jobs");
        waiting.served += size(&job) as u64;
        if waiting.jobs.is_empty() {
            self.callers.remove(&next);
        }
        self.len -= 1;
        Some(job)
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The queue and the inference thread's wake-up, shared by every handle.
struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
}

struct Queue {
    jobs: FairQueue<Job>,
    /// Every handle is gone: drain and stop.
    closed: bool,
}

impl Shared {
    /// The queue, whatever a panicking holder left: its state is consistent between calls (no
    /// method panics half-way), so a panic elsewhere must not take every later request down.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queue when the last handle is dropped.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.arrived.notify_all();
    }
}

/// The handle requests go through; dropping every clone stops the inference thread once the
/// queue is drained.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
    metrics: Metrics,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// Tells whether the inference thread runs ([`Batcher::health`]).
#[derive(Debug, Clone)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn is_alive(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Marks the batcher dead when the inference thread ends, however it ends (a panic included).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Batcher {
    pub fn start(model: impl Model, config: BatchConfig, metrics: Metrics) -> (Batcher, JoinHandle<()>) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: FairQueue::new(config.queue),
                closed: false,
            }),
            arrived: Condvar::new(),
        });
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let worker = {
            let (shared, metrics) = (shared.clone(), metrics.clone());
            let mut model = model;
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    let _guard = guard;
                    let mut cost = ImageCost::default();
                    while let Some(jobs) = next_batch(&shared, &config, &cost, &metrics) {
                        if let Some((inference, images)) = run_batch(&mut model, jobs, &metrics) {
                            cost.observe(inference, images);
                        }
                    }
                })
                .expect("spawn the inference thread")
        };
        (
            Batcher {
                _closer: Arc::new(Closer(shared.clone())),
                shared,
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

    /// Whether the inference thread runs, without a handle on its queue (which a clone would
    /// keep open).
    pub fn health(&self) -> Health {
        Health(self.alive.clone())
    }

    /// Queues `images` for labelling on behalf of `caller`; the receiver gets the detections (one
    /// list per image), or `Failed::Shed` if a lighter caller later took its place in a full queue.
    pub fn submit(
        &self,
        caller: &Caller,
        images: Vec<RgbBuffer>,
        options: DetectOptions,
    ) -> Result<oneshot::Receiver<Result<Labelled, Failed>>, Refused> {
        let whole = |b: &RgbBuffer| {
            b.width > 0 && b.height > 0 && b.data.len() as u64 == b.width as u64 * b.height as u64 * 3
        };
        if images.is_empty() || !images.iter().all(whole) {
            return Err(Refused::BadImage);
        }
        if !self.is_alive() {
            return Err(Refused::Stopped);
        }
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            caller: caller.clone(),
            images,
            options,
            reply,
        };
        let shed = {
            let mut queue = self.shared.lock();
            let shed = queue.jobs.push(caller, job).map_err(|_| Refused::QueueFull)?;
            self.metrics.queue_depth.set(queue.jobs.len() as i64);
            shed
        };
        self.shared.arrived.notify_one();
        if let Some(shed) = shed {
            tracing::debug!(caller = %shed.caller, "queue full: shed the newest request of the caller with the most waiting");
            let _ = shed.reply.send(Err(Failed::Shed));
        }
        Ok(receiver)
    }
}

/// The model's inference time per image, learnt from the batches it ran (an exponentially
/// weighted mean: the device's speed, whatever the batch sizes were). A batch's time over its
/// images also spreads the per-call cost, so it bounds what one more image adds from above: with
/// a large per-call cost (a big teacher on a GPU) batches can stay smaller than the budget
/// allows, and `max_batch_time` is the setting to raise there.
#[derive(Debug, Default, Clone, Copy)]
struct ImageCost {
    seconds: Option<f64>,
}

impl ImageCost {
    /// The weight of the latest batch.
    const WEIGHT: f64 = 0.25;

    fn observe(&mut self, inference: Duration, images: usize) {
        if images == 0 {
            return;
        }
        let latest = inference.as_secs_f64() / images as f64;
        self.seconds = Some(match self.seconds {
            None => latest,
            Some(mean) => mean + Self::WEIGHT * (latest - mean),
        });
    }

    /// Whether a batch of `images` is expected to run within `budget` (yes while nothing is
    /// known).
    fn within(&self, images: usize, budget: Duration) -> bool {
        self.seconds
            .is_none_or(|s| s * images as f64 <= budget.as_secs_f64())
    }
}

/// Waits for a request, then for more until `max_batch` images, `max_wait` after the first or
/// the next would take the batch past `max_batch_time`; `None` once the queue is closed and
/// drained.
fn next_batch(
    shared: &Shared,
    config: &BatchConfig,
    cost: &ImageCost,
    metrics: &Metrics,
) -> Option<Vec<Job>> {
    let images_of = |j: &Job| j.images.len();
    let mut queue = shared.lock();
    let first = loop {
        if let Some(job) = queue.jobs.pop(images_of) {
            break job;
        }
        if queue.closed {
            return None;
        }
        queue = shared.arrived.wait(queue).unwrap_or_else(PoisonError::into_inner);
    };
    let mut images = first.images.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + config.max_wait;
    while images < config.max_batch {
        let fits = |j: &Job| cost.within(images + j.images.len(), config.max_batch_time);
        if let Some(job) = queue.jobs.pop_if(images_of, fits) {
            images += job.images.len();
            jobs.push(job);
            continue;
        }
        if queue.jobs.len() > 0 {
            // The next request does not fit: it leads the next batch.
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || queue.closed {
            break;
        }
        queue = shared
            .arrived
            .wait_timeout(queue, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    metrics.queue_depth.set(queue.jobs.len() as i64);
    drop(queue);
    // Requests that gave up (timeout, client gone) are not worth the model's time.
    jobs.retain(|j| !j.reply.is_closed());
    Some(jobs)
}

/// Runs the jobs' images in one call with the loosest score threshold, no class filter and no
/// cap, then gives each job what its own options keep. (Class-aware greedy NMS at a lower score
/// threshold, filtered afterwards, keeps exactly what NMS at the higher threshold keeps; the cap
/// and the class filter apply per job, so a job's answer does not depend on its batch mates.)
/// Returns the inference time and the images of a batch the model ran.
fn run_batch(model: &mut impl Model, jobs: Vec<Job>, metrics: &Metrics) -> Option<(Duration, usize)> {
    if jobs.is_empty() {
        return None;
    }
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
    let result = model.detect(&images, &loosest);
    let inference = started.elapsed();
    let count = images.len();
    metrics.inference_seconds.observe(inference.as_secs_f64());
    metrics.batch_images.observe(count as f64);
    metrics.images.inc_by(count as u64);
    drop(images);
    let ran = result.is_ok().then_some((inference, count));
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
                let _ = job.reply.send(Err(Failed::Inference(e.clone())));
            }
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Arc::from(name)
    }

    /// (caller, images) jobs.
    type Sized = (&'static str, usize);

    fn size(j: &Sized) -> usize {
        j.1
    }

    #[test]
    fn a_caller_with_ten_times_the_requests_waits_behind_the_others() {
        let mut q = FairQueue::new(100);
        for _ in 0..30 {
            q.push(&caller("busy"), ("busy", 1)).unwrap();
        }
        for name in ["a", "b", "c"] {
            for _ in 0..3 {
                q.push(&caller(name), (name, 1)).unwrap();
            }
        }
        // The first 12 served: the three quiet cameras' 9 requests and 3 of the busy one's.
        let first: Vec<&str> = (0..12).map(|_| q.pop(size).unwrap().0).collect();
        assert_eq!(first.iter().filter(|c| **c == "busy").count(), 3, "{first:?}");
        for name in ["a", "b", "c"] {
            assert_eq!(first.iter().filter(|c| **c == name).count(), 3, "{first:?}");
        }
        assert_eq!(q.len(), 27);
    }

    #[test]
    fn the_share_is_counted_in_images_not_requests() {
        let mut q = FairQueue::new(100);
        for _ in 0..4 {
            q.push(&caller("big"), ("big", 8)).unwrap();
            q.push(&caller("small"), ("small", 1)).unwrap();
        }
        let order: Vec<&str> = (0..5).map(|_| q.pop(size).unwrap().0).collect();
        // One request of 8 images buys the small caller its next 4 requests (and more) first.
        assert_eq!(order, ["big", "small", "small", "small", "small"]);
    }

    #[test]
    fn a_full_queue_refuses_the_heaviest_callers_newest_request_not_the_newcomers() {
        let mut q = FairQueue::new(4);
        for i in 0..4 {
            q.push(&caller("busy"), ("busy", i)).unwrap();
        }
        // The busy camera itself is refused at the bound.
        assert_eq!(q.push(&caller("busy"), ("busy", 9)), Err(("busy", 9)));
        // A quiet one gets in; the busy one's newest request gives way.
        assert_eq!(q.push(&caller("quiet"), ("quiet", 1)), Ok(Some(("busy", 3))));
        assert_eq!(q.len(), 4);
        // Two callers of three requests and one: the quiet one's second still gets in.
        assert_eq!(q.push(&caller("quiet"), ("quiet", 1)), Ok(Some(("busy", 2))));
        // Now two each: whoever comes next is refused rather than shed the other.
        assert_eq!(q.push(&caller("quiet"), ("quiet", 1)), Err(("quiet", 1)));
        assert_eq!(q.push(&caller("busy"), ("busy", 9)), Err(("busy", 9)));
    }

    #[test]
    fn an_idle_caller_banks_no_credit() {
        let mut q = FairQueue::new(100);
        for _ in 0..13 {
            q.push(&caller("a"), ("a", 1)).unwrap();
        }
        // "a" is served 10 images while "b" is away.
        for _ in 0..10 {
            q.pop(size).unwrap();
        }
        for _ in 0..3 {
            q.push(&caller("b"), ("b", 1)).unwrap();
        }
        // "b" comes back at "a"'s virtual time: they alternate, "b" does not take 10 first.
        let order: Vec<&str> = (0..6).map(|_| q.pop(size).unwrap().0).collect();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn one_caller_alone_is_served_in_arrival_order() {
        let mut q = FairQueue::new(10);
        for i in 0..5 {
            q.push(&caller("only"), ("only", i)).unwrap();
        }
        let sizes: Vec<usize> = (0..5).map(|_| q.pop(|_| 1).unwrap().1).collect();
        assert_eq!(sizes, [0, 1, 2, 3, 4]);
        assert!(q.pop(size).is_none());
    }

    #[test]
    fn a_request_that_does_not_fit_stays_first_for_the_next_batch() {
        let mut q = FairQueue::new(10);
        q.push(&caller("a"), ("a", 4)).unwrap();
        q.push(&caller("b"), ("b", 1)).unwrap();
        // "a"'s request is next and too large: nothing is taken, not even "b"'s behind it.
        assert_eq!(q.pop_if(size, |j| j.1 <= 2), None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(size), Some(("a", 4)));
        assert_eq!(q.pop_if(size, |j| j.1 <= 2), Some(("b", 1)));
    }

    #[test]
    fn the_time_per_image_is_learnt_from_the_batches_run() {
        let mut cost = ImageCost::default();
        let budget = Duration::from_millis(250);
        assert!(cost.within(1000, budget), "nothing known: no bound but max_batch");
        // A CPU: 80 ms an image, in batches of any size.
        cost.observe(Duration::from_millis(640), 8);
        assert!(cost.within(3, budget) && !cost.within(4, budget));
        // It follows the device: batches at 10 ms an image move the estimate most of the way
        // in a few batches.
        for _ in 0..12 {
            cost.observe(Duration::from_millis(30), 3);
        }
        assert!(cost.within(8, budget));
        cost.observe(Duration::ZERO, 0);
        assert!(cost.within(8, budget), "a batch of nothing teaches nothing");
    }

    /// A model that takes `per_image` per image and finds nothing.
    struct Slow {
        per_image: Duration,
    }

    impl Model for Slow {
        fn detect(
            &mut self,
            images: &[RgbImage<'_>],
            _: &DetectOptions,
        ) -> Result<Vec<Vec<Detection>>, String> {
            std::thread::sleep(self.per_image * images.len() as u32);
            Ok(vec![Vec::new(); images.len()])
        }
    }

    #[tokio::test]
    async fn once_the_model_is_known_to_be_slow_a_batch_stays_within_its_time() {
        let config = BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(50),
            max_batch_time: Duration::from_millis(100),
            queue: 32,
        };
        let model = Slow {
            per_image: Duration::from_millis(40),
        };
        let (batcher, _worker) = Batcher::start(model, config, Metrics::new());
        let image = || RgbBuffer {
            data: vec![0; 3],
            width: 1,
            height: 1,
        };
        let batch_sizes = async |requests: usize| {
            let receivers: Vec<_> = (0..requests)
                .map(|i| {
                    let caller = caller(&format!("camera-{i}"));
                    batcher
                        .submit(&caller, vec![image()], DetectOptions::default())
                        .unwrap()
                })
                .collect();
            let mut sizes = Vec::new();
            for r in receivers {
                sizes.push(r.await.unwrap().unwrap().batch_images);
            }
            sizes
        };
        // Nothing known yet: eight requests that arrive together run as one batch of eight ...
        assert_eq!(batch_sizes(8).await, [8; 8]);
        // ... which showed 40 ms an image: now two fit in 100 ms.
        assert_eq!(batch_sizes(8).await, [2; 8]);
    }
}
