//! Real footage through real FFmpeg: vtest.avi (PETS09-S2L1) as a file, over HTTP (a progressive
//! file from Python's http.server, and live MJPEG from the ffmpeg CLI) and over RTSP from
//! GStreamer's RTSP server (Debian's packages, `scripts/setup`), including a dropped stream.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use autotuner_capture::source::{Credentials, Next, RtspTransport, Source, SourceConfig};

mod common;
use autotuner_tests::workers::FileServer;
use common::{Process, assets, free_port, h264_clip, rtsp_server};

fn frames_within(source: &Source, n: usize, timeout: Duration) -> Vec<autotuner_capture::source::Frame> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Next::Frame(frame) = source.next_frame_timeout(Duration::from_millis(200)) {
            out.push(frame);
        }
    }
    out
}

#[test]
fn a_file_gives_every_frame_with_the_luma_plane_of_an_independent_decode_and_ends_cleanly() {
    let source = Source::start(SourceConfig::new(
        assets().join("vtest.avi").display().to_string(),
    ))
    .unwrap();
    // OpenCV's decode of the same file, converted to gray: BT.601 weights on full-range RGB, so
    // the luma plane expanded from 16-235 to 0-255, up to rounding (a wrong plane or stride
    // would be tens of levels off).
    let reference = std::fs::read(assets().join("vtest-768x576.gray")).unwrap();
    let size = 768 * 576;
    let mut n = 0usize;
    let mut worst = 0.0f64;
    while let Some(frame) = source.next_frame() {
        assert_eq!((frame.width, frame.height), (768, 576));
        assert_eq!(frame.index, n as u64);
        assert!(!frame.live);
        let expected = &reference[n * size..(n + 1) * size];
        let diff: u64 = frame
            .y
            .iter()
            .zip(expected)
            .map(|(&y, &b)| {
                let full = ((y as f64 - 16.0) * 255.0 / 219.0).round().clamp(0.0, 255.0) as u8;
                full.abs_diff(b) as u64
            })
            .sum();
        worst = worst.max(diff as f64 / size as f64);
        n += 1;
        source.recycle(frame);
    }
    assert_eq!(n, 795, "every frame of vtest.avi");
    assert!(worst < 1.5, "mean absolute difference per pixel up to {worst}");
    assert_eq!(
        source.stats().dropped.load(Ordering::Relaxed),
        0,
        "a file is never dropped from"
    );
    assert!(source.take_error().is_none());
}

#[test]
fn a_missing_file_or_an_unknown_scheme_fails_at_once_with_a_clear_message() {
    let e = Source::start(SourceConfig::new("/nonexistent/video.avi")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/video.avi"), "{e}");
    let e = Source::start(SourceConfig::new("ftp://cam/x")).unwrap_err();
    assert!(e.to_string().contains("unsupported"), "{e}");
}

#[test]
fn a_progressive_file_over_http_decodes_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 40);
    let server = FileServer::start(dir.path());
    let over_http = Source::start(SourceConfig::new(server.url("clip.mkv"))).unwrap();
    let from_file = Source::start(SourceConfig::new(clip.display().to_string())).unwrap();
    let mut n = 0;
    while let Some(a) = over_http.next_frame() {
        let b = from_file.next_frame().expect("as many frames");
        assert_eq!(a.y, b.y, "frame {n}");
        assert!(!a.live, "a file of known length is not live");
        n += 1;
    }
    assert_eq!(n, 40);
}

#[test]
fn live_mjpeg_over_http_is_decoded() {
    let port = free_port();
    let _server = Process(
        Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-i"])
            .arg(assets().join("vtest.avi"))
            .args(["-frames:v", "60", "-f", "mpjpeg", "-q:v", "5", "-listen", "1"])
            .arg(format!("http://127.0.0.1:{port}/stream"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // No probe connection first: `-listen 1` serves exactly one client. The source retries
    // until the server listens.
    let mut config = SourceConfig::new(format!("http://127.0.0.1:{port}/stream"));
    config.reconnect_max = Duration::from_millis(500);
    let source = Source::start(config).unwrap();
    let frames = frames_within(&source, 20, Duration::from_secs(20));
    assert_eq!(frames.len(), 20);
    assert!(frames[0].live, "a multipart MJPEG stream has no end: live");
    assert_eq!((frames[0].width, frames[0].height), (768, 576));
    let mean = frames[5].y.iter().map(|&v| v as u64).sum::<u64>() / frames[5].y.len() as u64;
    assert!(
        (60..200).contains(&mean),
        "a picture, not a blank: mean luma {mean}"
    );
}

#[test]
fn rtsp_with_credentials_over_tcp_and_udp_and_a_dropped_stream_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), 300);
    let port = free_port();
    let url = format!("rtsp://127.0.0.1:{port}/live");
    let mut server = rtsp_server(&clip, port, Some(("camera-op", "s3cret:/@")));

    // Wrong credentials: refused, and retried in the background rather than failing the worker.
    let mut wrong = SourceConfig::new(url.clone());
    wrong.credentials = Some(Credentials {
        username: "camera-op".into(),
        password: "nope".into(),
    });
    let refused = Source::start(wrong).unwrap();
    assert!(frames_within(&refused, 1, Duration::from_secs(3)).is_empty());
    drop(refused);

    let credentials = Credentials {
        username: "camera-op".into(),
        password: "s3cret:/@".into(),
    };
    let mut udp = SourceConfig::new(url.clone());
    udp.rtsp_transport = RtspTransport::Udp;
    udp.credentials = Some(credentials.clone());
    let over_udp = Source::start(udp).unwrap();
    let frames = frames_within(&over_udp, 5, Duration::from_secs(20));
    assert_eq!(frames.len(), 5, "frames over UDP");
    drop(over_udp);

    let mut tcp = SourceConfig::new(url);
    tcp.credentials = Some(credentials);
    tcp.reconnect_min = Duration::from_millis(200);
    tcp.reconnect_max = Duration::from_millis(500);
    tcp.io_timeout = Duration::from_secs(2);
    let source = Source::start(tcp).unwrap();
    let first = frames_within(&source, 15, Duration::from_secs(20));
    assert_eq!(first.len(), 15, "frames over TCP");
    assert!(first[0].live);
    assert_eq!((first[0].width, first[0].height), (768, 576));

    // The server goes away mid-stream and comes back.
    drop(server);
    std::thread::sleep(Duration::from_secs(1));
    server = rtsp_server(&clip, port, Some(("camera-op", "s3cret:/@")));
    let before = source.stats().decoded.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while source.stats().decoded.load(Ordering::Relaxed) < before + 10 {
        assert!(Instant::now() < deadline, "no frames after the server came back");
        let _ = source.next_frame_timeout(Duration::from_millis(100));
    }
    assert!(source.stats().reconnects.load(Ordering::Relaxed) >= 1);
    drop(server);
}
