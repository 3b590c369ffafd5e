//! Video ingest: FFmpeg decodes on its own thread and hands frames over through a small bounded
//! queue. A live stream never waits for the pipeline: when the queue is full the oldest frame is
//! dropped (and counted), because a stale frame is worth less than the newest one. A file is read
//! at the pipeline's pace instead, so that a file run sees every frame and is reproducible.
//!
//! Frames carry their planes as 8-bit 4:2:0 YUV: the luma plane is the motion detector's gray
//! image as it is, and colour is only converted for the few crops that go to the teacher. Frame
//! buffers circulate between the two threads, so steady state allocates nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autotuner_detect::{PlaneSizeError, Yuv420Image};
use ffmpeg::format::Pixel;
use ffmpeg_next as ffmpeg;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("unsupported stream URL {0:?}: use a path, file://, rtsp://, http:// or https://")]
    Scheme(String),
    #[error("open {url}: {message}")]
    Open { url: String, message: String },
    #[error("{url} has no video stream")]
    NoVideo { url: String },
    #[error("read {url}: {message}")]
    Read { url: String, message: String },
}

/// How RTSP media travels: interleaved in the TCP connection (through NAT and firewalls), or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

impl std::str::FromStr for RtspTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            other => Err(format!("unknown RTSP transport {other:?} (tcp or udp)")),
        }
    }
}

#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// A path, `file://`, `rtsp://`, `http(s)://` (MJPEG, HLS, progressive files).
    pub url: String,
    pub rtsp_transport: RtspTransport,
    /// Put into the URL for the connection only; never logged.
    pub credentials: Option<Credentials>,
    /// Frames waiting for the pipeline.
    pub queue: usize,
    /// First wait before reconnecting to a dropped live stream; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// A network read that blocks longer than this fails (and the stream is reopened).
    pub io_timeout: Duration,
    /// Decoder threads (0: FFmpeg chooses).
    pub decoder_threads: usize,
    /// Live or not: `None` decides from the URL (rtsp is live, a path is not) and, for http,
    /// from whether the stream has a known duration.
    pub live: Option<bool>,
}

impl SourceConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            rtsp_transport: RtspTransport::Tcp,
            credentials: None,
            queue: 4,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            io_timeout: Duration::from_secs(10),
            decoder_threads: 1,
            live: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    File,
    Rtsp,
    Http,
}

fn scheme(url: &str) -> Result<Scheme, SourceError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("rtsp://") || lower.starts_with("rtsps://") {
        Ok(Scheme::Rtsp)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Scheme::Http)
    } else if lower.starts_with("file://") || !lower.contains("://") {
        Ok(Scheme::File)
    } else {
        Err(SourceError::Scheme(url.to_string()))
    }
}

/// Whether `url` names a local file (a path or `file://`), which ends, rather than a stream.
pub fn is_file(url: &str) -> bool {
    matches!(scheme(url), Ok(Scheme::File))
}

/// The URL without user information and without query or fragment (cameras and signed URLs
/// carry passwords and tokens there), for logs and reports.
pub fn redact(url: &str) -> String {
    autotuner_store::redact_uri(url)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL FFmpeg opens: `file://` stripped, credentials put in. It holds the password: never
/// log it (log [`redact`]ed `url`).
pub fn connection_url(config: &SourceConfig) -> String {
    let url = config.url.strip_prefix("file://").unwrap_or(&config.url);
    match (&config.credentials, url.split_once("://")) {
        (Some(c), Some((scheme, rest))) => {
            // User information can only be in the authority, before the path or query.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let host_start = rest[..end].rfind('@').map_or(0, |at| at + 1);
            let host = &rest[host_start..];
            format!(
                "{scheme}://{}:{}@{host}",
                percent_encode(&c.username),
                percent_encode(&c.password)
            )
        }
        _ => url.to_string(),
    }
}

/// A decoded frame as 8-bit 4:2:0 planes, each tightly packed.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Decoded frames before this one since the source started (across reconnects).
    pub index: u64,
    /// Presentation time in milliseconds from the stream's start, when the stream has one.
    pub pts_ms: Option<i64>,
    /// Wall-clock time of decoding, milliseconds since the Unix epoch.
    pub decoded_at_ms: u64,
    /// From a live stream (frames may be dropped; time is wall-clock time).
    pub live: bool,
    pub width: usize,
    pub height: usize,
    /// Y is 16-235 (limited range) unless this is set (JPEG-style full range).
    pub full_range: bool,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Frame {
    pub fn chroma_size(&self) -> (usize, usize) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }

    /// The planes as an image detectors sample.
    pub fn image(&self) -> Result<Yuv420Image<'_>, PlaneSizeError> {
        Yuv420Image::new(
            &self.y,
            &self.u,
            &self.v,
            self.width,
            self.height,
            self.full_range,
        )
    }
}

/// What the source has done; read at any time from any thread.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub decoded: AtomicU64,
    /// Frames dropped because the pipeline fell behind a live stream.
    pub dropped: AtomicU64,
    /// Packets or frames the decoder rejected or flagged as corrupt: skipped.
    pub corrupt: AtomicU64,
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

#[derive(Debug)]
struct QueueState {
    frames: VecDeque<Frame>,
    free: Vec<Frame>,
    closed: bool,
    error: Option<SourceError>,
}

/// The hand-over between the decoder thread and the pipeline.
#[derive(Debug)]
struct FrameQueue {
    capacity: usize,
    state: Mutex<QueueState>,
    changed: Condvar,
}

impl FrameQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_free(&self) -> Frame {
        self.lock().free.pop().unwrap_or_default()
    }

    /// Queues a frame: a live stream drops the oldest when full, a file waits for room.
    /// Returns false once the queue is closed.
    fn push(&self, frame: Frame, live: bool, stats: &SourceStats) -> bool {
        let mut state = self.lock();
        while !live && state.frames.len() >= self.capacity && !state.closed {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return false;
        }
        if state.frames.len() >= self.capacity
            && let Some(oldest) = state.frames.pop_front()
        {
            state.free.push(oldest);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        state.frames.push_back(frame);
        self.changed.notify_all();
        true
    }

    fn close(&self, error: Option<SourceError>) {
        let mut state = self.lock();
        state.closed = true;
        if state.error.is_none() {
            state.error = error;
        }
        self.changed.notify_all();
    }
}

struct CloseOnDrop(Arc<FrameQueue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(None);
    }
}

/// What [`Source::next_frame_timeout`] found.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    /// The end of a file, or the source was stopped.
    Ended,
    TimedOut,
}

/// A running source. Dropping it stops the decoder thread.
#[derive(Debug)]
pub struct Source {
    queue: Arc<FrameQueue>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    url: String,
}

impl Source {
    /// Starts decoding. A file that cannot be opened fails here; a live stream that cannot be
    /// reached yet is retried in the background.
    pub fn start(config: SourceConfig) -> Result<Source, SourceError> {
        let scheme = scheme(&config.url)?;
        ffmpeg::init().map_err(|e| SourceError::Open {
            url: redact(&config.url),
            message: e.to_string(),
        })?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        let queue = Arc::new(FrameQueue {
            capacity: config.queue.max(1),
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                free: Vec::new(),
                closed: false,
                error: None,
            }),
            changed: Condvar::new(),
        });
        let stats = Arc::new(SourceStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let url = redact(&config.url);
        // A file that cannot be opened is a configuration error: say so now. (FFmpeg's contexts
        // stay on the thread that opened them.)
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let thread = {
            let (queue, stats, stop) = (queue.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("decode".into())
                .spawn(move || {
                    // Closed even if decoding panics: a reader must never wait forever.
                    let _close = CloseOnDrop(queue.clone());
                    let first = if scheme == Scheme::File {
                        match Decoder::open(&config, scheme) {
                            Ok(d) => {
                                let _ = opened_tx.send(Ok(()));
                                Some(d)
                            }
                            Err(e) => {
                                let _ = opened_tx.send(Err(e));
                                queue.close(None);
                                return;
                            }
                        }
                    } else {
                        let _ = opened_tx.send(Ok(()));
                        None
                    };
                    run(config, scheme, first, &queue, &stats, &stop)
                })
                .expect("spawn the decoder thread")
        };
        if let Ok(Err(e)) = opened_rx.recv() {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Source {
            queue,
            stats,
            stop,
            thread: Some(thread),
            url,
        })
    }

    /// The next frame; `None` at the end of a file or after [`Source::stop`]. Give it back with
    /// [`Source::recycle`] to reuse its buffers.
    pub fn next_frame(&self) -> Option<Frame> {
        let mut state = self.queue.lock();
        loop {
            if let Some(frame) = state.frames.pop_front() {
                self.queue.changed.notify_all();
                return Some(frame);
            }
            if state.closed {
                return None;
            }
            state = self.queue.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`Source::next_frame`], but gives up after `timeout` (for a loop that must also
    /// notice a shutdown request).
    pub fn next_frame_timeout(&self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut state = self.queue.lock();
        loop {
            if let Some(frame) = state.frames.pop_front() {
                self.queue.changed.notify_all();
                return Next::Frame(frame);
            }
            if state.closed {
                return Next::Ended;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::TimedOut;
            }
            state = self
                .queue
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn recycle(&self, frame: Frame) {
        let mut state = self.queue.lock();
        if state.free.len() < self.queue.capacity + 2 {
            state.free.push(frame);
        }
    }

    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// The URL without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The error that ended the source, if it ended on one (a file that became unreadable).
    pub fn take_error(&self) -> Option<SourceError> {
        self.queue.lock().error.take()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.close(None);
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One open input and its decoder.
struct Decoder {
    input: ffmpeg::format::context::Input,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    time_base: ffmpeg::Rational,
    live: bool,
    scaler: Option<(Pixel, u32, u32, ffmpeg::software::scaling::Context)>,
    converted: ffmpeg::frame::Video,
}

impl Decoder {
    fn open(config: &SourceConfig, scheme: Scheme) -> Result<Decoder, SourceError> {
        let url = redact(&config.url);
        let mut options = ffmpeg::Dictionary::new();
        let timeout_us = config.io_timeout.as_micros().to_string();
        match scheme {
            Scheme::Rtsp => {
                let transport = match config.rtsp_transport {
                    RtspTransport::Tcp => "tcp",
                    RtspTransport::Udp => "udp",
                };
                options.set("rtsp_transport", transport);
                options.set("timeout", &timeout_us);
            }
            Scheme::Http => options.set("rw_timeout", &timeout_us),
            Scheme::File => {}
        }
        let input = ffmpeg::format::input_with_dictionary(&connection_url(config), options).map_err(|e| {
            SourceError::Open {
                url: url.clone(),
                message: e.to_string(),
            }
        })?;
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| SourceError::NoVideo { url: url.clone() })?;
        let index = stream.index();
        let time_base = stream.time_base();
        let mut context =
            ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| {
                SourceError::Open {
                    url: url.clone(),
                    message: format!("decoder parameters: {e}"),
                }
            })?;
        if config.decoder_threads != 1 {
            context.set_threading(ffmpeg::codec::threading::Config {
                kind: ffmpeg::codec::threading::Type::Frame,
                count: config.decoder_threads,
                ..Default::default()
            });
        }
        let decoder = context.decoder().video().map_err(|e| SourceError::Open {
            url: url.clone(),
            message: format!("no decoder: {e}"),
        })?;
        let live = config.live.unwrap_or(match scheme {
            Scheme::Rtsp => true,
            Scheme::File => false,
            Scheme::Http => input.duration() <= 0,
        });
        Ok(Decoder {
            input,
            stream: index,
            decoder,
            time_base,
            live,
            scaler: None,
            converted: ffmpeg::frame::Video::empty(),
        })
    }
}

enum Ended {
    /// End of the input.
    Eof,
    /// Asked to stop (or the consumer went away).
    Stopped,
    Failed(String),
}

fn run(
    config: SourceConfig,
    scheme: Scheme,
    mut first: Option<Decoder>,
    queue: &FrameQueue,
    stats: &SourceStats,
    stop: &AtomicBool,
) {
    let url = redact(&config.url);
    let mut wait = config.reconnect_min;
    let mut index = 0u64;
    loop {
        let opened = match first.take() {
            Some(d) => Ok(d),
            None => Decoder::open(&config, scheme),
        };
        let (ended, live) = match opened {
            Ok(mut decoder) => {
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(url, live = decoder.live, "video source open");
                let decoded_before = stats.decoded.load(Ordering::Relaxed);
                let ended = decode(&mut decoder, &mut index, queue, stats, stop);
                stats.connected.store(false, Ordering::Relaxed);
                if stats.decoded.load(Ordering::Relaxed) > decoded_before {
                    wait = config.reconnect_min;
                }
                (ended, decoder.live)
            }
            Err(e) => (Ended::Failed(e.to_string()), scheme != Scheme::File),
        };
        match ended {
            Ended::Stopped => break,
            Ended::Eof if !live => {
                tracing::info!(url, frames = index, "end of the video");
                queue.close(None);
                return;
            }
            Ended::Failed(message) if !live => {
                queue.close(Some(SourceError::Read { url, message }));
                return;
            }
            Ended::Eof => tracing::warn!(url, retry_in = ?wait, "the stream ended: reconnecting"),
            Ended::Failed(message) => {
                tracing::warn!(url, error = message, retry_in = ?wait, "the stream failed: reconnecting")
            }
        }
        if sleep_unless_stopped(wait, stop) {
            break;
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        wait = (wait * 2).min(config.reconnect_max);
    }
    queue.close(None);
}

fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    stop.load(Ordering::Relaxed)
}

fn decode(
    d: &mut Decoder,
    index: &mut u64,
    queue: &FrameQueue,
    stats: &SourceStats,
    stop: &AtomicBool,
) -> Ended {
    let mut packet = ffmpeg::Packet::empty();
    let mut frame = ffmpeg::frame::Video::empty();
    let mut flushing = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ended::Stopped;
        }
        if !flushing {
            match packet.read(&mut d.input) {
                Ok(()) => {
                    if packet.stream() != d.stream {
                        continue;
                    }
                    if d.decoder.send_packet(&packet).is_err() {
                        // A damaged packet: skip it, the next key frame recovers.
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                Err(ffmpeg::Error::Eof) => {
                    let _ = d.decoder.send_eof();
                    flushing = true;
                }
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
        loop {
            match d.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    // Every picture the decoder gives counts, skipped or not, so that indices
                    // stay the video's frame numbers.
                    let this = *index;
                    *index += 1;
                    if frame.is_corrupt() {
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut out = queue_frame(queue);
                    if let Err(e) = copy_planes(d, &frame, &mut out) {
                        tracing::debug!(error = %e, "unconvertible frame skipped");
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out.index = this;
                    out.live = d.live;
                    out.pts_ms = frame.timestamp().or(frame.pts()).map(|pts| {
                        (pts as f64 * f64::from(d.time_base.numerator()) * 1000.0
                            / f64::from(d.time_base.denominator().max(1))) as i64
                    });
                    out.decoded_at_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as u64);
                    stats.decoded.fetch_add(1, Ordering::Relaxed);
                    if !queue.push(out, d.live, stats) {
                        return Ended::Stopped;
                    }
                }
                Err(ffmpeg::Error::Eof) => return Ended::Eof,
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => break,
                Err(_) => {
                    stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

fn queue_frame(queue: &FrameQueue) -> Frame {
    queue.take_free()
}

fn copy_plane(src: &[u8], stride: usize, width: usize, height: usize, dst: &mut Vec<u8>) {
    dst.clear();
    for row in 0..height {
        dst.extend_from_slice(&src[row * stride..row * stride + width]);
    }
}

/// Copies the decoded picture's planes; formats other than 8-bit 4:2:0 are converted first.
fn copy_planes(d: &mut Decoder, frame: &ffmpeg::frame::Video, out: &mut Frame) -> Result<(), ffmpeg::Error> {
    let (width, height) = (frame.width(), frame.height());
    let format = frame.format();
    let source = match format {
        Pixel::YUV420P | Pixel::YUVJ420P => frame,
        _ => {
            let stale = d
                .scaler
                .as_ref()
                .is_none_or(|(f, w, h, _)| (*f, *w, *h) != (format, width, height));
            if stale {
                let context = ffmpeg::software::scaling::Context::get(
                    format,
                    width,
                    height,
                    Pixel::YUV420P,
                    width,
                    height,
                    ffmpeg::software::scaling::Flags::BILINEAR,
                )?;
                d.scaler = Some((format, width, height, context));
                d.converted = ffmpeg::frame::Video::empty();
            }
            let (_, _, _, scaler) = d.scaler.as_mut().expect("scaler");
            scaler.run(frame, &mut d.converted)?;
            &d.converted
        }
    };
    out.width = width as usize;
    out.height = height as usize;
    out.full_range =
        format == Pixel::YUVJ420P || matches!(frame.color_range(), ffmpeg::util::color::Range::JPEG);
    let (cw, ch) = out.chroma_size();
    copy_plane(
        source.data(0),
        source.stride(0),
        out.width,
        out.height,
        &mut out.y,
    );
    copy_plane(source.data(1), source.stride(1), cw, ch, &mut out.u);
    copy_plane(source.data(2), source.stride(2), cw, ch, &mut out.v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_into_the_connection_url_and_never_into_the_logged_one() {
        let mut config = SourceConfig::new("rtsp://old:secret@cam.local:554/stream1");
        config.credentials = Some(Credentials {
            username: "op".into(),
            password: "p@ss/w:rd".into(),
        });
        assert_eq!(
            connection_url(&config),
            "rtsp://op:p%40ss%2Fw%3Ard@cam.local:554/stream1"
        );
        assert_eq!(redact(&config.url), "rtsp://cam.local:554/stream1");
        assert!(!format!("{config:?}").contains("p@ss"));
        assert_eq!(connection_url(&SourceConfig::new("file:///v/a.avi")), "/v/a.avi");
        // Secrets in the query are not logged, and an `@` there is not user information.
        assert_eq!(
            redact("http://cam/videostream.cgi?user=admin&pwd=hunter2"),
            "http://cam/videostream.cgi?…"
        );
        let mut tricky = SourceConfig::new("http://cam.local/s?owner=a@evil.example");
        tricky.credentials = config.credentials.clone();
        assert!(connection_url(&tricky).starts_with("http://op:p%40ss%2Fw%3Ard@cam.local/s?owner=a@evil"));
    }

    #[test]
    fn schemes_are_recognised_and_others_refused() {
        assert_eq!(scheme("/data/vtest.avi").unwrap(), Scheme::File);
        assert_eq!(scheme("RTSP://x/y").unwrap(), Scheme::Rtsp);
        assert_eq!(scheme("https://x/y.m3u8").unwrap(), Scheme::Http);
        assert!(matches!(scheme("ftp://x/y"), Err(SourceError::Scheme(_))));
    }
}
