//! End-to-end detector throughput (JPEG decode + preprocessing + inference + NMS) of the Rust path
//! against Python (cv2 + numpy + onnxruntime, tests/detect/reference.py) on the same JPEGs in one
//! run, at batch 1 and batched; then the HTTP service under load from a second process (wrk)
//! against in-process calls through the same batcher. Writes bench-results/detect-throughput.json.
//!
//! `cargo bench -p autotuner-annotator --bench throughput` (after `scripts/fetch-assets`; needs
//! `wrk`, which `scripts/bench-detect` installs), or `scripts/bench-detect`.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use autotuner_annotator::api::ModelInfo;
use autotuner_annotator::batcher::BatchConfig;
use autotuner_annotator::images;
use autotuner_annotator::server::{ServerConfig, serve_model};
use autotuner_detect::{DetectOptions, Detector, DevicePreference, Family, RgbImage, Runtime};

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn assets() -> PathBuf {
    autotuner_detect::assets::dir()
}

fn model(family: Family) -> PathBuf {
    assets().join("models").join(match family {
        Family::Yolo => "yolov12n.onnx",
        _ => "ssd_mobilenet_v2_coco_raw.onnx",
    })
}

/// Frames 401, 409, ... of vtest.avi as JPEG files in `dir`; their bytes.
fn write_jpegs(dir: &Path, count: usize) -> Vec<Vec<u8>> {
    let (w, h) = (768usize, 576usize);
    let rgb = std::fs::read(assets().join("vtest-768x576-401-795.rgb"))
        .expect("colour frames: run scripts/fetch-assets");
    (0..count)
        .map(|i| {
            let frame = &rgb[i * 8 * w * h * 3..(i * 8 + 1) * w * h * 3];
            let img = image::RgbImage::from_raw(w as u32, h as u32, frame.to_vec()).unwrap();
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
            let bytes = out.into_inner();
            std::fs::write(dir.join(format!("{i:03}.jpg")), &bytes).unwrap();
            bytes
        })
        .collect()
}

fn rust_images_per_second(runtime: &Runtime, family: Family, batch: usize, jpegs: &[Vec<u8>]) -> f64 {
    let mut detector = Detector::load(runtime, &model(family), family, DevicePreference::Cpu).unwrap();
    let options = DetectOptions::default();
    let mut run = || {
        let mut found = 0;
        for chunk in jpegs.chunks(batch) {
            let decoded: Vec<_> = chunk
                .iter()
                .map(|j| images::decode(j, u64::MAX).unwrap())
                .collect();
            let views: Vec<RgbImage<'_>> = decoded
                .iter()
                .map(|d| RgbImage::new(&d.data, d.width as usize, d.height as usize).unwrap())
                .collect();
            found += detector
                .detect(&views, &options)
                .unwrap()
                .iter()
                .map(Vec::len)
                .sum::<usize>();
        }
        found
    };
    run(); // warm-up
    let started = Instant::now();
    let found = run();
    assert!(found > 0);
    jpegs.len() as f64 / started.elapsed().as_secs_f64()
}

fn python_images_per_second(family: Family, batch: usize, dir: &Path) -> f64 {
    let name = if family == Family::Yolo { "yolo" } else { "ssdRaw" };
    let out = Command::new(assets().join("python"))
        .arg(manifest_dir().join("../../tests/detect/reference.py"))
        .args([
            "bench",
            name,
            model(family).to_str().unwrap(),
            dir.to_str().unwrap(),
            &batch.to_string(),
        ])
        .output()
        .expect("python reference");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["images_per_second"].as_f64().unwrap()
}

const CONCURRENCY: usize = 8;
const SECONDS: u64 = 15;

fn main() {
    let runtime = Runtime::load(&assets().join("libonnxruntime.so")).expect("ONNX Runtime");
    let dir = std::env::temp_dir().join(format!("autotuner-bench-detect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jpegs = write_jpegs(&dir, 48);
    let mut rows = Vec::new();
    println!(
        "{:<44} {:>10} {:>12} {:>7}",
        "end-to-end (decode+pre+model+NMS)", "rust img/s", "python img/s", "ratio"
    );
    for (label, family, batch) in [
        ("teacher YOLOv12n, batch 1", Family::Yolo, 1),
        ("student SSD-MobileNetV2, batch 1", Family::SsdRaw, 1),
        ("student SSD-MobileNetV2, batch 8", Family::SsdRaw, 8),
    ] {
        let rust = rust_images_per_second(&runtime, family, batch, &jpegs);
        let python = python_images_per_second(family, batch, &dir);
        println!("{label:<44} {rust:>10.1} {python:>12.1} {:>6.2}x", rust / python);
        rows.push(serde_json::json!({ "path": label, "rust_images_per_second": rust, "python_images_per_second": python, "ratio": rust / python }));
    }

    // The service: in-process calls through the batcher, then HTTP from wrk, same server.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = tokio.block_on(async {
        let detector = Detector::load(
            &runtime,
            &model(Family::Yolo),
            Family::Yolo,
            DevicePreference::Cpu,
        )
        .unwrap();
        let batch = BatchConfig {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            // Batches of eight whatever they cost: what the model does with them is measured.
            max_batch_time: Duration::MAX,
            queue: 64,
        };
        let info = ModelInfo {
            name: "yolov12n".into(),
            version: "1".into(),
            device: "cpu".into(),
        };
        let (app, batcher, worker) = serve_model(detector, batch, ServerConfig::new(info));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let done = Arc::new(AtomicU64::new(0));
        let jpegs = Arc::new(jpegs.clone());
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let (batcher, done, jpegs) = (batcher.clone(), done.clone(), jpegs.clone());
                tokio::spawn(async move {
                    let mut i = t;
                    while Instant::now() < deadline {
                        let jpeg = jpegs[i % jpegs.len()].clone();
                        let decoded =
                            tokio::task::spawn_blocking(move || images::decode(&jpeg, u64::MAX).unwrap())
                                .await
                                .unwrap();
                        let caller: autotuner_annotator::batcher::Caller =
                            std::sync::Arc::from(format!("client-{t}"));
                        let reply = batcher
                            .submit(&caller, vec![decoded], DetectOptions::default())
                            .expect("queue");
                        reply.await.unwrap().unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                        i += CONCURRENCY;
                    }
                })
            })
            .collect();
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let in_process = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

        let script = dir.join("post.lua");
        std::fs::write(
            &script,
            format!(
                r#"local f = io.open("{}", "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.headers["Content-Type"] = "image/jpeg"
done = function(s, l, r)
  io.write(string.format('{{"requests":%d,"seconds":%f,"errors":%d,"non2xx":%d,"p99_ms":%f}}\n',
    s.requests, s.duration / 1e6, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    s.errors.status, l:percentile(99) / 1e3))
end
"#,
                dir.join("000.jpg").display()
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{CONCURRENCY}"),
                &format!("-d{SECONDS}s"),
                "--timeout",
                "30s",
                "-s",
            ])
            .arg(&script)
            .arg(format!("http://{addr}/v1/annotate"))
            .output()
            .await
            .expect("wrk (apt-get install wrk)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))
            .unwrap_or_else(|_| panic!("wrk said: {text}"));
        let http_rps = summary["requests"].as_f64().unwrap() / summary["seconds"].as_f64().unwrap();
        (in_process, http_rps, summary, worker)
    });
    // Stop the server (and with it the last handle on the batcher), then let the model finish.
    drop(tokio);
    let (in_process, http_rps, summary, worker) = http;
    worker.join().unwrap();
    let overhead = 1.0 - http_rps / in_process;
    println!(
        "service, concurrency {CONCURRENCY}, {SECONDS} s each: in-process {in_process:.1} img/s, HTTP (wrk) {http_rps:.1} req/s, \
         overhead {:.1}%, HTTP errors {} non-2xx {}",
        overhead * 100.0,
        summary["errors"],
        summary["non2xx"]
    );
    let out = serde_json::json!({
        "command": "cargo bench -p autotuner-annotator --bench throughput",
        "images": jpegs.len(),
        "library": rows,
        "service": {
            "concurrency": CONCURRENCY, "seconds_each": SECONDS, "batching": "max 8 images, max wait 5 ms, queue 64",
            "in_process_images_per_second": in_process, "http_requests_per_second": http_rps,
            "http_overhead": overhead, "wrk": summary,
        },
    });
    let results = manifest_dir().join("../../bench-results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(
        results.join("detect-throughput.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    println!("wrote bench-results/detect-throughput.json");
}
