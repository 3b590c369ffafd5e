//! The capture run: a selection thread (decode -> motion -> sampling -> crops -> spool) and an
//! annotation loop (spool -> teacher -> dataset), joined only by the durable spool. The selection
//! thread never waits for the teacher; the annotation loop never loses what it has not stored.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use autotuner_annotator::client::Crop;
use autotuner_store::Location;
use autotuner_vision::{GrayImage, MotionConfig, MotionDetector, Rect};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::dataset::{Added, Dataset, DatasetConfig, Flushed, LabelBox, Sample, Split};
use crate::edge::{Edge, frame_time_ms};
use crate::metrics::Metrics;
use crate::picture;
use crate::remote::Unsent;
use crate::round::RoundCounter;
use crate::select::{self, Purpose, Sampling, Selector, Skipped};
use crate::source::{Frame, Next, Source, SourceConfig};
use crate::spool::{Acquired, Entry, EntryMeta, Spool, Waiting, WriterLock};
use crate::teacher::{Teacher, TeacherError};

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub source: SourceConfig,
    pub motion: MotionConfig,
    pub sampling: Sampling,
    pub dataset: DatasetConfig,
    pub dataset_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_entries: usize,
    pub spool_max_bytes: u64,
    /// Target classes, COCO names.
    pub classes: Vec<String>,
    pub jpeg_quality: u8,
    /// Selected frames per teacher request.
    pub batch_frames: usize,
    /// Stop after this many decoded frames (a file's first part, a smoke run).
    pub max_frames: Option<u64>,
    /// The dataset in object storage (`s3://bucket/prefix`): `dataset_dir` is then a local
    /// working copy, and a sample counts as stored (and leaves the spool) only once its image
    /// and the annotation file that names it are in the store.
    pub remote: Option<Location>,
    /// The student on the camera's node, fed every decoded frame after motion detection.
    pub edge: Option<Arc<Edge>>,
    /// In a cluster: the round of collection, whose images the labelling loop counts.
    pub round: Option<Arc<RoundCounter>>,
    /// Send the teacher crops around the motion (else the whole selected frame).
    pub crop_to_motion: bool,
    /// Rebuild the motion detector's background after this much stream time without a reset.
    pub background_reset_after: Option<Duration>,
}

impl CaptureConfig {
    /// The defaults: the reference motion method, every frame examined, no budget, the
    /// spool beside the dataset.
    pub fn new(url: &str, dataset_dir: PathBuf) -> Self {
        Self {
            source: SourceConfig::new(url),
            motion: MotionConfig::default(),
            sampling: Sampling::default(),
            dataset: DatasetConfig::default(),
            spool_dir: dataset_dir.join("spool"),
            dataset_dir,
            spool_max_entries: 10_000,
            spool_max_bytes: 2 << 30,
            classes: vec!["person".into()],
            jpeg_quality: 90,
            batch_frames: 4,
            max_frames: None,
            remote: None,
            edge: None,
            round: None,
            crop_to_motion: true,
            background_reset_after: None,
        }
    }
}

/// What a run did (also the standalone report's motion statistics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaptureSummary {
    pub frames_decoded: u64,
    pub frames_examined: u64,
    pub frames_selected: u64,
    pub drift_samples: u64,
    pub frames_dropped: u64,
    pub frames_corrupt: u64,
    pub reconnects: u64,
    pub annotated: u64,
    /// Mean over selected frames of the crops' area over the frame's.
    pub mean_crop_area_fraction: f64,
    pub mean_crops_per_frame: f64,
    pub crop_bytes: u64,
    /// JPEG bytes of the same selected frames, whole.
    pub full_frame_bytes: u64,
    pub train_images: usize,
    pub eval_images: usize,
    pub drift_images: usize,
    pub spool_left: usize,
    pub spool_dropped: u64,
}

#[derive(Debug, Default)]
struct SelectionTotals {
    crop_area_fraction: f64,
    crops: u64,
}

/// Runs capture until the source ends (a file) or `shutdown` is set (SIGTERM), then stores what
/// the teacher labels of the spool (all of it at the end of a file; on shutdown the current
/// batch, the rest stays spooled for the next start).
pub async fn run(
    config: CaptureConfig,
    teacher: Teacher,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<CaptureSummary> {
    // The stream first: a wrong URL or a missing file fails before anything is created.
    let source = Source::start(config.source.clone()).context("open the video source")?;
    let writer = {
        let (dir, shutdown) = (config.spool_dir.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || {
            WriterLock::acquire(&dir, Duration::from_millis(200), || {
                shutdown.load(Ordering::SeqCst)
            })
        })
        .await
        .context("wait for the spool's writer lock")?
        .context("take the spool's writer lock")?
    };
    let Acquired::Held(_writer) = writer else {
        return Ok(CaptureSummary::default());
    };
    let spool = Spool::open(
        &config.spool_dir,
        config.spool_max_entries,
        config.spool_max_bytes,
        // No more wait than the rolling splits keep: more would be replaced once labelled.
        config.dataset.rolling.map_or(Waiting::UNBOUNDED, |r| Waiting {
            drift: r.drift,
            samples: r.train.saturating_add(r.eval),
        }),
    )
    .context("open the spool")?;
    let classes = config
        .classes
        .iter()
        .map(|c| {
            autotuner_detect::labels::id(c)
                .map(|id| (id, c.clone()))
                .with_context(|| format!("{c:?} is not a COCO class name the teacher knows"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(remote) = &config.remote {
        // The working copy starts as what the store holds: anything local beyond that was never
        // acknowledged, and its spool entries will store it again.
        crate::remote::restore(remote, &config.dataset_dir).await?;
    }
    let dataset =
        Dataset::open(&config.dataset_dir, config.dataset.clone(), classes).context("open the dataset")?;
    record_dataset(&dataset, &metrics);
    if !spool.is_empty() {
        tracing::info!(
            entries = spool.len(),
            "resuming: frames from the last run wait for the teacher"
        );
    }
    let shared = Shared {
        config: config.clone(),
        spool: Arc::new(Mutex::new(spool)),
        dataset: Arc::new(Mutex::new(dataset)),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        wake: Arc::new(Notify::new()),
        selection_done: Arc::new(AtomicBool::new(false)),
        totals: Arc::new(Mutex::new(SelectionTotals::default())),
    };

    let inference = config.edge.as_ref().map(|edge| edge.spawn());
    let selection = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("select".into())
            .spawn(move || {
                // Set even if selection panics: the annotation loop must not wait forever.
                let _done = DoneOnDrop(shared.selection_done.clone(), shared.wake.clone());
                let result = select_frames(&shared, &source);
                sync_source_metrics(&source, &shared.metrics);
                shared.selection_done.store(true, Ordering::SeqCst);
                shared.wake.notify_one();
                let error = source.take_error();
                result.and(error.map_or(Ok(()), |e| Err(e.into())))
            })
            .expect("spawn the selection thread")
    };

    annotate(&shared, &teacher).await?;
    if shared.config.remote.is_none() {
        // A clean stop leaves each annotation file whole (its journal empty).
        let dataset = Arc::clone(&shared.dataset);
        on_disk(move || {
            let mut dataset = dataset.lock().unwrap_or_else(|e| e.into_inner());
            dataset.write_whole().context("write the dataset")
        })
        .await?;
    }
    let selected = selection
        .join()
        .map_err(|_| anyhow::anyhow!("the selection thread panicked"));
    if let (Some(edge), Some(inference)) = (&config.edge, inference) {
        edge.close();
        inference
            .join()
            .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
    }
    selected??;

    let totals = shared.totals.lock().unwrap_or_else(|e| e.into_inner());
    let spool = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
    let dataset = shared.dataset.lock().unwrap_or_else(|e| e.into_inner());
    let selected = metrics.frames("selected");
    Ok(CaptureSummary {
        frames_decoded: metrics.frames("decoded"),
        frames_examined: metrics.frames("examined"),
        frames_selected: selected,
        drift_samples: metrics.frames("drift"),
        frames_dropped: metrics.frames("dropped"),
        frames_corrupt: metrics.frames("corrupt"),
        reconnects: metrics.reconnects.get(),
        annotated: metrics.annotated.get(),
        mean_crop_area_fraction: totals.crop_area_fraction / selected.max(1) as f64,
        mean_crops_per_frame: totals.crops as f64 / selected.max(1) as f64,
        crop_bytes: metrics.upload_bytes.with_label_values(&["crops"]).get(),
        full_frame_bytes: metrics.upload_bytes.with_label_values(&["full_frames"]).get(),
        train_images: dataset.len(Split::Train),
        eval_images: dataset.len(Split::Eval),
        drift_images: dataset.len(Split::Drift),
        spool_left: spool.len(),
        spool_dropped: spool.stats().dropped + spool.stats().corrupt,
    })
}

/// The student alone on a stream (the standalone `autotuner serve`): every decoded frame is
/// offered to `edge`, with no motion detection and no teacher. Runs until the end of a file,
/// `max_frames`, or `shutdown`; returns the frames decoded.
pub fn infer_stream(
    source: SourceConfig,
    edge: &Arc<Edge>,
    max_frames: Option<u64>,
    shutdown: &AtomicBool,
) -> anyhow::Result<u64> {
    let source = Source::start(source).context("open the video source")?;
    let inference = edge.spawn();
    let mut decoded = 0;
    while !shutdown.load(Ordering::Relaxed) {
        let frame = match source.next_frame_timeout(Duration::from_millis(200)) {
            Next::Frame(frame) => frame,
            Next::Ended => break,
            Next::TimedOut => continue,
        };
        if max_frames.is_some_and(|m| frame.index >= m) {
            source.recycle(frame);
            break;
        }
        decoded += 1;
        let time = frame_time_ms(&frame);
        edge.offer(frame, time, |f| source.recycle(f));
    }
    source.stop();
    edge.close();
    inference
        .join()
        .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
    match source.take_error() {
        Some(e) => Err(e.into()),
        None => Ok(decoded),
    }
}

struct DoneOnDrop(Arc<AtomicBool>, Arc<Notify>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.notify_one();
    }
}

/// The same crops give the same key (a retry is recognised), other crops another one, even from
/// another camera with the same frame numbers: the ids and a hash of every crop and offset.
fn idempotency_key(batch: &[Entry]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    for e in batch {
        feed(e.meta.id.as_bytes());
        for (crop, rect) in e.crops.iter().zip(&e.meta.crops) {
            feed(crop);
            for v in rect {
                feed(&v.to_le_bytes());
            }
        }
    }
    format!(
        "{}-{}-{h:016x}",
        batch.first().map_or("", |e| e.meta.id.as_str()),
        batch.len()
    )
}

/// Removes the entries whose samples are stored.
fn forget(spool: &Mutex<Spool>, ids: impl Iterator<Item = String>, metrics: &Metrics) -> anyhow::Result<()> {
    let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
    for id in ids {
        spool.remove(&id).context("update the spool")?;
    }
    record_spool(&spool, metrics);
    Ok(())
}

/// Copies the spool's size and its running counts of lost and replaced entries into the metrics.
fn record_spool(spool: &Spool, metrics: &Metrics) {
    metrics.spool_entries.set(spool.len() as i64);
    let stats = spool.stats();
    catch_up(&metrics.spool_dropped, stats.dropped + stats.corrupt);
    catch_up(&metrics.spool_superseded, stats.superseded);
}

/// Brings a counter up to a running total counted elsewhere (counters only go up).
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Copies the decoder thread's counters into the metrics.
fn sync_source_metrics(source: &Source, metrics: &Metrics) {
    let stats = source.stats();
    for (outcome, total) in [
        ("decoded", &stats.decoded),
        ("dropped", &stats.dropped),
        ("corrupt", &stats.corrupt),
    ] {
        catch_up(
            &metrics.frames.with_label_values(&[outcome]),
            total.load(Ordering::Relaxed),
        );
    }
    catch_up(&metrics.reconnects, stats.reconnects.load(Ordering::Relaxed));
}

/// The sample id of a frame: stable across restarts for a file (its index), unique for a live
/// stream (its decoding time).
fn sample_id(frame: &Frame) -> String {
    if frame.live {
        format!("t{:013}-{:08}", frame.decoded_at_ms, frame.index)
    } else {
        format!("f{:08}", frame.index)
    }
}

/// What the selection thread and the labelling loop share.
#[derive(Clone)]
struct Shared {
    config: CaptureConfig,
    spool: Arc<Mutex<Spool>>,
    dataset: Arc<Mutex<Dataset>>,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
    /// Wakes the labelling loop: an entry was spooled, or selection ended.
    wake: Arc<Notify>,
    selection_done: Arc<AtomicBool>,
    totals: Arc<Mutex<SelectionTotals>>,
}

fn select_frames(shared: &Shared, source: &Source) -> anyhow::Result<()> {
    let Shared {
        config,
        spool,
        dataset,
        metrics,
        shutdown,
        wake,
        totals,
        ..
    } = shared;
    let mut detector: Option<MotionDetector> = None;
    let mut detector_size: Option<(usize, usize)> = None;
    let mut selector = Selector::new(config.sampling.clone());
    let mut scratch = Vec::new();
    let examined = metrics.frames.with_label_values(&["examined"]);
    // Done with a frame: to the student on the node when it runs, else back to the decoder.
    let release = |frame: Frame| match &config.edge {
        Some(edge) => {
            let time = frame_time_ms(&frame);
            edge.offer(frame, time, |f| source.recycle(f));
        }
        None => source.recycle(frame),
    };
    let mut seen = 0u64;
    let mut last_reset_ms = 0i64;
    while !shutdown.load(Ordering::Relaxed) {
        let frame = match source.next_frame_timeout(Duration::from_millis(200)) {
            Next::Frame(frame) => frame,
            Next::Ended => break,
            Next::TimedOut => {
                sync_source_metrics(source, metrics);
                continue;
            }
        };
        seen += 1;
        if seen.is_multiple_of(64) {
            sync_source_metrics(source, metrics);
        }
        if config.max_frames.is_some_and(|m| frame.index >= m) {
            source.recycle(frame);
            source.stop();
            break;
        }
        if !selector.examines(frame.index) {
            release(frame);
            continue;
        }
        let (width, height) = (frame.width, frame.height);
        // A new stream size (a camera reconnecting with other settings) needs a new background.
        if detector_size != Some((width, height)) {
            detector =
                Some(MotionDetector::new(width, height, config.motion.clone()).context("motion settings")?);
            detector_size = Some((width, height));
        }
        let motion = detector.as_mut().expect("detector");
        // `motion.backgroundResetInterval`, counted in stream time from the last reset of any
        // cause (the start, a lighting change): this frame rebuilds the background.
        let now_ms = frame_time_ms(&frame);
        if let Some(after) = config.background_reset_after
            && now_ms.saturating_sub(last_reset_ms) >= after.as_millis() as i64
        {
            motion.reset_at_next_frame();
        }
        let report = match GrayImage::new(&frame.y, width, height).map(|image| motion.process(image)) {
            Ok(Ok(report)) => report,
            _ => {
                metrics.frames.with_label_values(&["invalid"]).inc();
                release(frame);
                continue;
            }
        };
        if report.reset.is_some() {
            last_reset_ms = now_ms;
        }
        examined.inc();
        let purpose = match selector.decide(report, frame_time_ms(&frame)) {
            Ok(p) => p,
            Err(skipped) => {
                let outcome = match skipped {
                    Skipped::NoMotion => "no_motion",
                    Skipped::Budget => "budget",
                };
                metrics.frames.with_label_values(&[outcome]).inc();
                release(frame);
                continue;
            }
        };
        let crops = if config.crop_to_motion {
            selector.crops(report, width as u32, height as u32)
        } else {
            vec![Rect::new(0, 0, width as u32, height as u32)]
        };
        if crops.is_empty() {
            release(frame);
            continue;
        }
        metrics.frames.with_label_values(&["selected"]).inc();
        if purpose == Purpose::Drift {
            metrics.frames.with_label_values(&["drift"]).inc();
        }
        let crop_area: u64 = crops.iter().map(|c| c.area()).sum();
        {
            let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
            t.crop_area_fraction += crop_area as f64 / (width * height) as f64;
            t.crops += crops.len() as u64;
        }
        let id = sample_id(&frame);
        // A restart re-selects the frames of a file: those already labelled are neither encoded
        // nor sent again.
        if dataset.lock().unwrap_or_else(|e| e.into_inner()).contains(&id) {
            release(frame);
            continue;
        }
        let crop_jpegs: Vec<Vec<u8>> = crops
            .iter()
            .map(|c| picture::jpeg(&frame, *c, config.jpeg_quality, &mut scratch))
            .collect();
        let frame_jpeg = picture::frame_jpeg(&frame, config.jpeg_quality, &mut scratch);
        metrics
            .upload_bytes
            .with_label_values(&["crops"])
            .inc_by(crop_jpegs.iter().map(|c| c.len() as u64).sum());
        metrics
            .upload_bytes
            .with_label_values(&["full_frames"])
            .inc_by(frame_jpeg.len() as u64);
        let entry = Entry {
            meta: EntryMeta {
                id,
                drift: purpose == Purpose::Drift,
                time_ms: frame_time_ms(&frame),
                decoded_at_ms: frame.decoded_at_ms,
                frame_index: frame.index,
                width: width as u32,
                height: height as u32,
                crops: crops.iter().map(|c| [c.x, c.y, c.width, c.height]).collect(),
            },
            crops: crop_jpegs,
            frame: frame_jpeg,
        };
        release(frame);
        {
            let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
            spool.push(&entry).context("write to the spool")?;
            record_spool(&spool, metrics);
        }
        wake.notify_one();
    }
    Ok(())
}

/// The dataset's sizes onto its metrics (which the cluster report reads).
fn record_dataset(dataset: &Dataset, metrics: &Metrics) {
    for split in [Split::Train, Split::Eval, Split::Drift] {
        let label = [split.dir()];
        metrics
            .dataset_images
            .with_label_values(&label)
            .set(dataset.len(split) as i64);
        let stored = metrics.dataset_stored.with_label_values(&label);
        stored.inc_by(dataset.stored(split).saturating_sub(stored.get()));
    }
}

/// Counts what the dataset's store holds (the volume after a flush, object storage after an
/// upload) into the metrics and the round: the status the operator starts a Job on never counts
/// an image or a split the Job could not read yet.
fn count_stored(dataset: &Dataset, shared: &Shared) {
    record_dataset(dataset, &shared.metrics);
    if let Some(round) = &shared.config.round {
        round.count(dataset);
    }
}

/// What [`store_batch`] stored: each sample's split and id, and what the flush wrote and
/// deleted (annotation files; images of samples a rolling split replaced), as keys below the
/// dataset's root.
struct StoredBatch {
    stored: Vec<(Split, String)>,
    flushed: Flushed,
}

/// Stores a labelled batch in the dataset: each frame's image now, the annotation files at the
/// flush. Disk work with fsyncs: run it with [`on_disk`].
fn store_batch(shared: &Shared, batch: &[Entry], labels: &[Vec<LabelBox>]) -> anyhow::Result<StoredBatch> {
    let mut dataset = shared.dataset.lock().unwrap_or_else(|e| e.into_inner());
    let mut stored = Vec::new();
    for (entry, labels) in batch.iter().zip(labels) {
        let rects = entry.meta.crop_rects();
        let unlabelled = select::outside(&rects, entry.meta.width, entry.meta.height);
        let sample = Sample {
            id: &entry.meta.id,
            time_ms: entry.meta.time_ms,
            decoded_at_ms: entry.meta.decoded_at_ms,
            width: entry.meta.width,
            height: entry.meta.height,
            jpeg: &entry.frame,
            labels,
            unlabelled: &unlabelled,
        };
        match dataset.add(&sample, entry.meta.drift).context("store a sample")? {
            Added::Stored(split) => stored.push((split, entry.meta.id.clone())),
            Added::Duplicate => {}
            Added::Full(split) => tracing::debug!(?split, "split full: sample not stored"),
        }
    }
    // Annotations first, then forget the spool entries: a crash in between replays them, and
    // the dataset ignores the replay.
    let flushed = dataset.flush().context("write the dataset")?;
    if shared.config.remote.is_none() {
        count_stored(&dataset, shared);
    }
    Ok(StoredBatch { stored, flushed })
}

/// Removes the spool entries whose samples are stored, on the blocking pool (file removals and a
/// directory fsync).
async fn forget_stored(shared: &Shared, ids: Vec<String>) -> anyhow::Result<()> {
    let (spool, metrics) = (Arc::clone(&shared.spool), shared.metrics.clone());
    on_disk(move || forget(&spool, ids.into_iter(), &metrics)).await
}

/// Runs disk work (spool reads, image writes and annotation files with their fsyncs) on tokio's
/// blocking pool, so that the runtime's threads stay free for the teacher's requests and the
/// health and metrics endpoints while the disk is slow.
async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("disk work on the blocking pool")?
}

async fn annotate(shared: &Shared, teacher: &Teacher) -> anyhow::Result<()> {
    let Shared {
        config,
        spool,
        dataset,
        metrics,
        shutdown,
        wake,
        selection_done,
        ..
    } = shared;
    let mut batch_size = config.batch_frames.max(1);
    let mut backoff = Duration::from_millis(500);
    // Stored locally but not yet in object storage (an upload failed): retried first.
    let mut unsent = Unsent::default();
    let mut unsent_ids: Vec<String> = Vec::new();
    loop {
        if let (Some(remote), false) = (&config.remote, unsent.is_empty()) {
            match crate::remote::upload(remote, &config.dataset_dir, &unsent).await {
                Ok(uploaded) => {
                    tracing::debug!(?uploaded, "uploaded to object storage");
                    // Only now does the store hold them: counted, they may start a Job.
                    count_stored(&dataset.lock().unwrap_or_else(|e| e.into_inner()), shared);
                    forget_stored(shared, std::mem::take(&mut unsent_ids)).await?;
                    unsent = Unsent::default();
                }
                Err(e) => {
                    metrics.annotate_errors.with_label_values(&["store"]).inc();
                    if shutdown.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "object storage unavailable: samples stay spooled");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        // SIGTERM: the batch in hand is stored; the rest stays spooled for the next start.
        if shutdown.load(Ordering::Relaxed) && selection_done.load(Ordering::SeqCst) {
            return Ok(());
        }
        let batch = {
            let spool = Arc::clone(spool);
            on_disk(move || {
                let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
                spool.next_batch(batch_size).context("read the spool")
            })
            .await?
        };
        if let Some(round) = config.round.as_ref().filter(|r| r.stale()) {
            // A round began: count what is already stored of it.
            round.count(&dataset.lock().unwrap_or_else(|e| e.into_inner()));
        }
        if batch.is_empty() {
            if selection_done.load(Ordering::SeqCst) || shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), wake.notified()).await;
            continue;
        }
        let frames: Vec<Vec<Crop>> = batch
            .iter()
            .map(|e| {
                e.crops
                    .iter()
                    .zip(e.meta.crop_rects())
                    .map(|(jpeg, rect)| Crop {
                        image: jpeg.clone(),
                        content_type: "image/jpeg",
                        offset: [rect.x, rect.y],
                    })
                    .collect()
            })
            .collect();
        let key = idempotency_key(&batch);
        match teacher.label(&frames, &key).await {
            Ok(labels) => {
                backoff = Duration::from_millis(500);
                batch_size = config.batch_frames.max(1);
                let ids: Vec<String> = batch.iter().map(|e| e.meta.id.clone()).collect();
                let StoredBatch { stored, flushed } = {
                    let shared = shared.clone();
                    on_disk(move || store_batch(&shared, &batch, &labels)).await?
                };
                metrics.annotated.inc_by(ids.len() as u64);
                unsent_ids.extend(ids);
                if config.remote.is_some() {
                    // With object storage the entries go once the store has the samples (the
                    // upload at the top of the loop).
                    unsent.add(stored, flushed);
                }
                if unsent.is_empty() {
                    forget_stored(shared, std::mem::take(&mut unsent_ids)).await?;
                }
            }
            Err(TeacherError::Refused(message)) if batch.len() > 1 => {
                // Find the culprit: one frame per request until one passes.
                tracing::warn!(
                    error = message,
                    "the teacher refused a batch: sending frames one by one"
                );
                metrics.annotate_errors.with_label_values(&["refused"]).inc();
                batch_size = 1;
            }
            Err(TeacherError::Refused(message)) => {
                tracing::warn!(
                    id = batch[0].meta.id,
                    error = message,
                    "the teacher refused a frame: dropped"
                );
                metrics.annotate_errors.with_label_values(&["refused"]).inc();
                let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
                spool.discard(&batch[0].meta.id).context("update the spool")?;
                record_spool(&spool, metrics);
            }
            Err(TeacherError::Unavailable(message)) => {
                metrics.annotate_errors.with_label_values(&["unavailable"]).inc();
                if shutdown.load(Ordering::Relaxed) {
                    return Ok(());
                }
                tracing::warn!(error = message, retry_in = ?backoff, "the teacher is unavailable: frames stay spooled");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
