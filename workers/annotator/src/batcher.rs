//! Dynamic batching with fair queuing: requests wait (bounded) for one inference thread, which
//! takes as many images as arrive within `max_wait` of the first, up to `max_batch`, and runs
//! them together. One annotator serves many cameras, so the queue is shared between callers by
//! the images they have been served (start-time fair queuing, an image at a time): a camera that
//! sends ten times as much as the others waits behind them, not they behind it, and a camera back
//! from a pause (a quiet one) has its few crops run before a busy one's backlog. A full queue
//! refuses the newest request of the caller with the most waiting (the server answers 429), so
//! the refusals go to the heaviest caller; nothing is buffered without bound.
//!
//! A batch also stops growing where its expected inference time would pass `max_batch_time`
//! (the time per image learnt from the batches run so far): a request that arrives while a batch
//! runs waits at most about that long for it. On a GPU, where a batch of eight costs little more
//! than one image, the bound is `max_batch`; on a CPU, where each image costs its own time and
//! batching gains little, a batch is an image, and a request's images may run in different
//! batches, so a quiet camera's request waits for one image of a busy one's, not for a whole
//! request of it (`benches/fairness.rs`).

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
    /// A batch takes no further image once its expected inference time would pass this (its
    /// first image always runs).
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
            max_batch_time: Duration::from_millis(50),
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
    /// One list per image, in the request's order.
    pub detections: Vec<Vec<Detection>>,
    /// The time of the batches its images ran in, together.
    pub inference: Duration,
    /// The largest of those batches, in images.
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

/// A queued request: its images not yet taken for a batch, and where their labels gather.
struct Job {
    images: VecDeque<RgbBuffer>,
    next_index: usize,
    answer: Arc<Answer>,
}

/// One image of a request, on its way into a batch.
struct Part {
    answer: Arc<Answer>,
    index: usize,
    image: RgbBuffer,
}

/// A request taken for batches an image at a time: its images can run in different batches,
/// so a request never waits for a whole batch of another caller's request to finish.
trait Divisible {
    type Part;
    /// The next image; `None` once every one is taken.
    fn take_one(&mut self) -> Option<Self::Part>;
    fn is_taken(&self) -> bool;
}

impl Divisible for Job {
    type Part = Part;

    fn take_one(&mut self) -> Option<Part> {
        let image = self.images.pop_front()?;
        self.next_index += 1;
        Some(Part {
            answer: self.answer.clone(),
            index: self.next_index - 1,
            image,
        })
    }

    fn is_taken(&self) -> bool {
        self.images.is_empty()
    }
}

/// Where a request's labels gather across the batches its images run in; it is answered with
/// its last image (or its first failure).
struct Answer {
    options: DetectOptions,
    gathered: Mutex<Gathered>,
}

struct Gathered {
    detections: Vec<Vec<Detection>>,
    left: usize,
    inference: Duration,
    largest_batch: usize,
    /// The batch whose time was last added (an image is counted once per batch, not per image).
    last_batch: Option<u64>,
    /// Taken when the request is answered.
    reply: Option<oneshot::Sender<Result<Labelled, Failed>>>,
}

impl Answer {
    fn gathered(&self) -> MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether anyone still waits for this request (not answered, not given up).
    fn is_wanted(&self) -> bool {
        self.gathered().reply.as_ref().is_some_and(|r| !r.is_closed())
    }

    fn fail(&self, why: Failed) {
        if let Some(reply) = self.gathered().reply.take() {
            // A request that gave up (timeout, disconnect) no longer listens: nothing to do.
            let _ = reply.send(Err(why));
        }
    }

    /// Image `index`'s labels, found in `batch` (of `images`, which ran for `inference`).
    fn deliver(&self, index: usize, found: Vec<Detection>, batch: u64, images: usize, inference: Duration) {
        let mut g = self.gathered();
        if g.reply.is_none() {
            return;
        }
        g.detections[index] = found;
        g.left -= 1;
        if g.last_batch != Some(batch) {
            g.last_batch = Some(batch);
            g.inference += inference;
        }
        g.largest_batch = g.largest_batch.max(images);
        if g.left == 0 {
            let labelled = Labelled {
                detections: std::mem::take(&mut g.detections),
                inference: g.inference,
                batch_images: g.largest_batch,
            };
            if let Some(reply) = g.reply.take() {
                let _ = reply.send(Ok(labelled));
            }
        }
    }
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
    /// The virtual time of this caller's next image: one more for each image it is served.
    next: u64,
}

/// The fair queue, apart from threads and channels (its decisions are tested alone). `J` is a
/// request, served an image at a time: the caller whose next image has the least virtual time
/// goes first (start-time fair queuing by image), so callers with work waiting share the model
/// equally whatever their request sizes.
///
/// A caller that comes back after a pause starts up to `credit` images behind the queue's
/// virtual time, so a quiet camera's request (a few crops) runs before a busy camera's backlog
/// instead of sharing the model with it image by image: what it waits for is about the image in
/// flight, not twice its own time. The credit is only what it was not served: a caller that
/// comes back at once starts where it left off, so returning often buys nothing.
#[derive(Debug)]
struct FairQueue<J> {
    /// Callers with requests waiting.
    callers: HashMap<Caller, Waiting<J>>,
    /// The next virtual time of callers with nothing waiting, kept while it is later than
    /// where a newcomer would start (older ones are the same as forgotten).
    away: HashMap<Caller, u64>,
    /// The virtual time just after the last image taken (never decreases): where a caller that
    /// kept up has its next image.
    now: u64,
    credit: u64,
    len: usize,
    capacity: usize,
    /// Arrival order, the tie-break between callers served alike.
    arrivals: u64,
}

impl<J: Divisible> FairQueue<J> {
    fn new(capacity: usize, credit: usize) -> Self {
        Self {
            callers: HashMap::new(),
            away: HashMap::new(),
            now: 0,
            credit: credit as u64,
            len: 0,
            capacity: capacity.max(1),
            arrivals: 0,
        }
    }

    /// Where a caller that comes back (or is new) starts.
    fn start_of(&self) -> u64 {
        self.now.saturating_sub(self.credit)
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
                .max_by_key(|(_, w)| (w.jobs.len(), w.next))
                .map(|(c, w)| (c.clone(), w.jobs.len()))
                .expect("a full queue has callers");
            // Shedding one of the heaviest's for one of ours must leave us lighter than it was.
            if heaviest.1 <= mine + 1 {
                return Err(job);
            }
            let waiting = self.callers.get_mut(&heaviest.0).expect("present");
            // It has two requests or more, so its newest has no image taken yet.
            shed = waiting.jobs.pop_back().map(|(_, j)| j);
            self.len -= 1;
        }
        let arrival = self.arrivals;
        self.arrivals += 1;
        let (start, away) = (self.start_of(), &mut self.away);
        self.callers
            .entry(caller.clone())
            .or_insert_with(|| Waiting {
                jobs: VecDeque::new(),
                next: away.remove(caller).unwrap_or(0).max(start),
            })
            .jobs
            .push_back((arrival, job));
        self.len += 1;
        Ok(shed)
    }

    /// The next image: from the oldest request of the caller whose next image has the least
    /// virtual time (arrival order between equals).
    fn pop(&mut self) -> Option<J::Part> {
        let caller = self
            .callers
            .iter()
            .min_by_key(|(_, w)| (w.next, w.jobs.front().map_or(u64::MAX, |(a, _)| *a)))
            .map(|(c, _)| c.clone())?;
        let waiting = self.callers.get_mut(&caller).expect("present");
        let (_, job) = waiting.jobs.front_mut().expect("callers in the map have jobs");
        let part = job.take_one();
        if job.is_taken() {
            waiting.jobs.pop_front();
            self.len -= 1;
        }
        waiting.next += 1;
        self.now = self.now.max(waiting.next);
        if waiting.jobs.is_empty() {
            let next = waiting.next;
            self.callers.remove(&caller);
            let start = self.start_of();
            self.away.retain(|_, n| *n > start);
            if next > start {
                self.away.insert(caller, next);
            }
        }
        // `submit` queues no request without images, so every one taken gives one.
        part
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
                jobs: FairQueue::new(config.queue, config.max_batch),
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
                    let mut batch = 0;
                    while let Some(parts) = next_batch(&shared, &config, &cost, &metrics) {
                        if let Some((inference, images)) = run_batch(&mut model, parts, batch, &metrics) {
                            cost.observe(inference, images);
                        }
                        batch += 1;
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
            answer: Arc::new(Answer {
                options,
                gathered: Mutex::new(Gathered {
                    detections: vec![Vec::new(); images.len()],
                    left: images.len(),
                    inference: Duration::ZERO,
                    largest_batch: 0,
                    last_batch: None,
                    reply: Some(reply),
                }),
            }),
            images: images.into(),
            next_index: 0,
        };
        let shed = {
            let mut queue = self.shared.lock();
            let shed = queue.jobs.push(caller, job).map_err(|_| Refused::QueueFull)?;
            self.metrics.queue_depth.set(queue.jobs.len() as i64);
            shed
        };
        self.shared.arrived.notify_one();
        if let Some(shed) = shed {
            tracing::debug!("queue full: shed the newest request of the caller with the most waiting");
            shed.answer.fail(Failed::Shed);
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

/// Waits for an image, then for more until `max_batch` images, `max_wait` after the first or
/// the next would take the batch past `max_batch_time`; `None` once the queue is closed and
/// drained.
fn next_batch(
    shared: &Shared,
    config: &BatchConfig,
    cost: &ImageCost,
    metrics: &Metrics,
) -> Option<Vec<Part>> {
    let mut queue = shared.lock();
    let first = loop {
        if let Some(part) = queue.jobs.pop() {
            break part;
        }
        if queue.closed {
            return None;
        }
        queue = shared.arrived.wait(queue).unwrap_or_else(PoisonError::into_inner);
    };
    let mut parts = vec![first];
    let deadline = Instant::now() + config.max_wait;
    while parts.len() < config.max_batch && cost.within(parts.len() + 1, config.max_batch_time) {
        if let Some(part) = queue.jobs.pop() {
            parts.push(part);
            continue;
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
    // Requests that gave up (timeout, client gone) or already failed are not worth the model's
    // time.
    parts.retain(|p| p.answer.is_wanted());
    Some(parts)
}

/// Runs the images in one call with the loosest score threshold, no class filter and no cap,
/// then gives each request what its own options keep. (Class-aware greedy NMS at a lower score
/// threshold, filtered afterwards, keeps exactly what NMS at the higher threshold keeps; the cap
/// and the class filter apply per request, so a request's answer does not depend on its batch
/// mates.) Returns the inference time and the images of a batch the model ran.
fn run_batch(
    model: &mut impl Model,
    parts: Vec<Part>,
    batch: u64,
    metrics: &Metrics,
) -> Option<(Duration, usize)> {
    if parts.is_empty() {
        return None;
    }
    let loosest = DetectOptions {
        min_score: parts
            .iter()
            .map(|p| p.answer.options.min_score)
            .fold(f32::INFINITY, f32::min),
        iou_threshold: parts[0].answer.options.iou_threshold,
        max_detections: usize::MAX,
        classes: None,
    };
    let images: Vec<RgbImage<'_>> = parts
        .iter()
        .filter_map(|p| RgbImage::new(&p.image.data, p.image.width as usize, p.image.height as usize).ok())
        .collect();
    // `submit` admits only whole images, so none was dropped above.
    debug_assert_eq!(images.len(), parts.len());
    let started = Instant::now();
    let result = model.detect(&images, &loosest);
    let inference = started.elapsed();
    let count = images.len();
    metrics.inference_seconds.observe(inference.as_secs_f64());
    metrics.batch_images.observe(count as f64);
    metrics.images.inc_by(count as u64);
    drop(images);
    let result = result.and_then(|all| {
        // An answer per image, or none: a request missing one would never be answered.
        if all.len() == count {
            Ok(all)
        } else {
            Err(format!("the model gave {} answers for {count} images", all.len()))
        }
    });
    let ran = result.is_ok().then_some((inference, count));
    match result {
        Ok(all) => {
            for (part, found) in parts.into_iter().zip(all) {
                let options = &part.answer.options;
                let kept = found
                    .into_iter()
                    .filter(|d| d.score >= options.min_score)
                    .filter(|d| options.classes.as_ref().is_none_or(|c| c.contains(&d.class_id)))
                    .take(options.max_detections)
                    .collect();
                part.answer.deliver(part.index, kept, batch, count, inference);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "inference failed");
            for part in parts {
                part.answer.fail(Failed::Inference(e.clone()));
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

    /// A request in the tests: its caller, an id and the images not yet taken.
    #[derive(Debug, PartialEq, Eq)]
    struct Request {
        caller: &'static str,
        id: usize,
        images: usize,
    }

    impl Divisible for Request {
        /// (caller, request id)
        type Part = (&'static str, usize);

        fn take_one(&mut self) -> Option<Self::Part> {
            self.images = self.images.checked_sub(1)?;
            Some((self.caller, self.id))
        }

        fn is_taken(&self) -> bool {
            self.images == 0
        }
    }

    fn push(
        q: &mut FairQueue<Request>,
        name: &'static str,
        id: usize,
        images: usize,
    ) -> Result<Option<Request>, Request> {
        q.push(
            &caller(name),
            Request {
                caller: name,
                id,
                images,
            },
        )
    }

    /// The callers of the next `n` images.
    fn next_callers(q: &mut FairQueue<Request>, n: usize) -> Vec<&'static str> {
        (0..n).map(|_| q.pop().unwrap().0).collect()
    }

    #[test]
    fn a_caller_with_ten_times_the_requests_waits_behind_the_others() {
        let mut q = FairQueue::new(100, 0);
        for i in 0..30 {
            push(&mut q, "busy", i, 1).unwrap();
        }
        for name in ["a", "b", "c"] {
            for i in 0..3 {
                push(&mut q, name, i, 1).unwrap();
            }
        }
        // The first 12 served: the three quiet cameras' 9 requests and 3 of the busy one's.
        let first = next_callers(&mut q, 12);
        assert_eq!(first.iter().filter(|c| **c == "busy").count(), 3, "{first:?}");
        for name in ["a", "b", "c"] {
            assert_eq!(first.iter().filter(|c| **c == name).count(), 3, "{first:?}");
        }
        assert_eq!(q.len(), 27);
    }

    #[test]
    fn the_share_is_counted_in_images_and_a_large_request_is_served_an_image_at_a_time() {
        let mut q = FairQueue::new(100, 0);
        for i in 0..4 {
            push(&mut q, "big", i, 8).unwrap();
            push(&mut q, "small", i, 1).unwrap();
        }
        // The small caller's four requests are done by the eighth image, while the big one's
        // first request of eight is half done: it is still queued.
        assert_eq!(next_callers(&mut q, 8), ["big", "small"].repeat(4));
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop(), Some(("big", 0)));
    }

    #[test]
    fn a_request_leaves_the_queue_with_its_last_image() {
        let mut q = FairQueue::new(10, 0);
        push(&mut q, "a", 0, 3).unwrap();
        push(&mut q, "a", 1, 1).unwrap();
        assert_eq!(q.pop(), Some(("a", 0)));
        assert_eq!(q.pop(), Some(("a", 0)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(("a", 0)));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(("a", 1)));
        assert_eq!((q.len(), q.pop()), (0, None));
    }

    #[test]
    fn a_full_queue_refuses_the_heaviest_callers_newest_request_not_the_newcomers() {
        let mut q = FairQueue::new(4, 0);
        for i in 0..4 {
            push(&mut q, "busy", i, 1).unwrap();
        }
        let request = |caller, id| Request {
            caller,
            id,
            images: 1,
        };
        // The busy camera itself is refused at the bound.
        assert_eq!(push(&mut q, "busy", 9, 1), Err(request("busy", 9)));
        // A quiet one gets in; the busy one's newest request gives way.
        assert_eq!(push(&mut q, "quiet", 0, 1), Ok(Some(request("busy", 3))));
        assert_eq!(q.len(), 4);
        // Two callers of three requests and one: the quiet one's second still gets in.
        assert_eq!(push(&mut q, "quiet", 1, 1), Ok(Some(request("busy", 2))));
        // Now two each: whoever comes next is refused rather than shed the other.
        assert_eq!(push(&mut q, "quiet", 2, 1), Err(request("quiet", 2)));
        assert_eq!(push(&mut q, "busy", 9, 1), Err(request("busy", 9)));
    }

    #[test]
    fn a_caller_back_from_a_pause_is_served_up_to_its_credit_ahead_of_a_backlog() {
        let mut q = FairQueue::new(100, 2);
        for i in 0..13 {
            push(&mut q, "a", i, 1).unwrap();
        }
        // "a" is served 10 images while "b" is away.
        next_callers(&mut q, 10);
        for i in 0..4 {
            push(&mut q, "b", i, 1).unwrap();
        }
        // "b" comes back two images (its credit) behind "a", not ten: then they alternate.
        assert_eq!(next_callers(&mut q, 6), ["b", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn a_quiet_cameras_request_runs_before_a_busy_cameras_backlog() {
        let mut q = FairQueue::new(100, 8);
        for i in 0..10 {
            push(&mut q, "busy", i, 3).unwrap();
        }
        next_callers(&mut q, 12);
        push(&mut q, "quiet", 0, 3).unwrap();
        // Its three crops go next, not one in two beside the busy camera's.
        assert_eq!(next_callers(&mut q, 4), ["quiet", "quiet", "quiet", "busy"]);
    }

    #[test]
    fn coming_back_at_once_buys_no_credit() {
        let mut q = FairQueue::new(100, 8);
        for i in 0..40 {
            push(&mut q, "busy", i, 1).unwrap();
        }
        // "eager" sends its next request as soon as its last one is taken: it shares the model
        // with the backlog, one image each, instead of going first every time.
        push(&mut q, "eager", 0, 1).unwrap();
        let mut served = Vec::new();
        for i in 1..=30 {
            let (name, _) = q.pop().unwrap();
            if name == "eager" {
                push(&mut q, "eager", i, 1).unwrap();
            }
            served.push(name);
        }
        let eager = served.iter().filter(|c| **c == "eager").count();
        // Its credit once (eight images), then one in two of the rest.
        assert!(eager <= 8 + 11, "{eager} of 30: {served:?}");
        assert_eq!(
            served[20..].iter().filter(|c| **c == "eager").count(),
            5,
            "{served:?}"
        );
    }

    #[test]
    fn one_caller_alone_is_served_in_arrival_order() {
        let mut q = FairQueue::new(10, 8);
        for i in 0..5 {
            push(&mut q, "only", i, 1).unwrap();
        }
        let ids: Vec<usize> = (0..5).map(|_| q.pop().unwrap().1).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert!(q.pop().is_none());
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

    /// A model that takes `per_image` per image and finds one box per image, as wide as the
    /// image (so that answers can be told apart).
    struct Measuring {
        per_image: Duration,
    }

    impl Model for Measuring {
        fn detect(
            &mut self,
            images: &[RgbImage<'_>],
            _: &DetectOptions,
        ) -> Result<Vec<Vec<Detection>>, String> {
            std::thread::sleep(self.per_image * images.len() as u32);
            Ok(images
                .iter()
                .map(|i| {
                    vec![Detection {
                        bbox: autotuner_detect::BBox::new(0.0, 0.0, i.width as f32, 1.0),
                        class_id: 0,
                        score: 0.9,
                    }]
                })
                .collect())
        }
    }

    /// A batcher over [`Measuring`] (`per_image`) that waits 50 ms for a batch to fill, up to
    /// eight images or `max_batch_time`.
    fn measuring(per_image: Duration, max_batch_time: Duration) -> Batcher {
        let config = BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(50),
            max_batch_time,
            queue: 32,
        };
        Batcher::start(Measuring { per_image }, config, Metrics::new()).0
    }

    /// Images of one row of pixels, `widths` wide.
    fn images(widths: std::ops::Range<u32>) -> Vec<RgbBuffer> {
        widths
            .map(|w| RgbBuffer {
                data: vec![0; 3 * w as usize],
                width: w,
                height: 1,
            })
            .collect()
    }

    #[tokio::test]
    async fn once_the_model_is_known_to_be_slow_a_batch_stays_within_its_time() {
        let batcher = measuring(Duration::from_millis(40), Duration::from_millis(100));
        let batch_sizes = async |requests: u32| {
            let receivers: Vec<_> = (0..requests)
                .map(|i| {
                    let caller = caller(&format!("camera-{i}"));
                    batcher
                        .submit(&caller, images(1..2), DetectOptions::default())
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

    #[tokio::test]
    async fn a_request_larger_than_a_batch_runs_in_several_and_is_answered_whole_in_order() {
        let batcher = measuring(Duration::from_millis(20), Duration::from_millis(50));
        let widths =
            |l: &Labelled| -> Vec<u32> { l.detections.iter().map(|d| d[0].bbox.x1 as u32).collect() };
        let submit = |caller: &str, imgs| {
            batcher
                .submit(&Arc::from(caller), imgs, DetectOptions::default())
                .unwrap()
        };
        // Teaches the batcher 20 ms an image: two fit in 50 ms.
        submit("a", images(1..5)).await.unwrap().unwrap();
        let seven = submit("a", images(10..17)).await.unwrap().unwrap();
        assert_eq!(widths(&seven), (10..17).collect::<Vec<_>>());
        assert_eq!(seven.batch_images, 2, "seven images in batches of two");
        // Four batches' time (2 + 2 + 2 + 1 images at 20 ms).
        assert!(
            seven.inference >= Duration::from_millis(140),
            "{:?}",
            seven.inference
        );
    }
}
