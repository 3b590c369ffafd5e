//! Per-frame latency of the student on the node while models are swapped in, against the same
//! stream without swaps, in one run: vtest.avi fed at 25 fps as a live camera would, a new model
//! (a copy of the student) loaded, checked and switched to every 3 s. Reports p50/p99 of the
//! frames within a second after each swap and of the others, and whether any frame went without a
//! result. Writes bench-results/edge-swap.json.
//!
//! `cargo run --release -p autotuner-capture --example swap` (or `scripts/bench-edge`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use autotuner_capture::edge::{Edge, EdgeSettings, Loaded, ModelId, ModelLoader};
use autotuner_capture::metrics::Metrics;
use autotuner_capture::source::{Source, SourceConfig};
use autotuner_detect::{DevicePreference, Family};

const SECONDS: u64 = 30;
const SWAP_EVERY: Duration = Duration::from_secs(3);

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let assets = autotuner_detect::assets::dir();
    let student = assets.join("models/ssd_mobilenet_v2_coco_raw.onnx");
    let dir = std::env::temp_dir().join(format!("autotuner-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = EdgeSettings {
        device: DevicePreference::Cpu,
        threads: 1,
        ..EdgeSettings::default()
    };
    let edge = Edge::new(settings, Metrics::new());
    let loader = ModelLoader::new(
        edge.clone(),
        Some(&assets.join("libonnxruntime.so")),
        Family::SsdRaw,
        Default::default(),
        dir.join("cache"),
    );
    let first = ModelId {
        version: 0,
        uri: student.display().to_string(),
    };
    assert_eq!(runtime.block_on(loader.load(first)), Loaded::Staged);
    let mut results = edge.subscribe();
    let collector = runtime.spawn(async move {
        let mut got = Vec::new();
        while let Ok(frame) = results.recv().await {
            got.push((
                Instant::now(),
                frame.detections.frame,
                frame.detections.model_version,
                frame.detections.inference_ms,
            ));
        }
        got
    });
    let inference = edge.spawn();
    let started = Instant::now();
    let mut swaps: Vec<Instant> = Vec::new();
    let mut next_swap = started + SWAP_EVERY;
    let mut offered = 0u64;
    let mut version = 0;
    'stream: loop {
        let source =
            Source::start(SourceConfig::new(assets.join("vtest.avi").display().to_string())).unwrap();
        while let Some(mut frame) = source.next_frame() {
            let due = started + Duration::from_millis(40 * offered);
            if Instant::now() < due {
                std::thread::sleep(due - Instant::now());
            }
            if started.elapsed() > Duration::from_secs(SECONDS) {
                source.recycle(frame);
                break 'stream;
            }
            if Instant::now() >= next_swap {
                version += 1;
                let copy: PathBuf = dir.join(format!("{version}.onnx"));
                std::fs::copy(&student, &copy).unwrap();
                let (loader, id) = (
                    loader.clone(),
                    ModelId {
                        version,
                        uri: copy.display().to_string(),
                    },
                );
                runtime.spawn(async move { loader.load(id).await });
                swaps.push(Instant::now());
                next_swap += SWAP_EVERY;
            }
            frame.live = true;
            frame.index = offered;
            frame.decoded_at_ms = started.elapsed().as_millis() as u64;
            offered += 1;
            edge.offer(frame, (offered * 40) as i64, |f| source.recycle(f));
        }
    }
    edge.close();
    inference.join().unwrap();
    // The broadcast ends with the last handle on the edge.
    drop((edge, loader));
    let got = runtime.block_on(collector).unwrap();
    // Frames inferred within a second after a swap was asked for (the load and check run
    // beside inference, the switch happens in that second).
    let near = |t: Instant| swaps.iter().any(|&s| t >= s && t < s + Duration::from_secs(1));
    let (during, steady): (Vec<_>, Vec<_>) = got.iter().partition(|(t, ..)| near(*t));
    let ms = |v: &[&(Instant, u64, u32, f64)]| v.iter().map(|g| g.3).collect::<Vec<_>>();
    let (during, steady) = (ms(&during), ms(&steady));
    let served = got.last().map_or(0, |g| g.2);
    let dropped = offered - got.len() as u64;
    let row = serde_json::json!({
        "command": "cargo run --release -p autotuner-capture --example swap",
        "stream": "vtest.avi 768x576 offered at 25 fps as a live stream, student on 1 ONNX Runtime thread",
        "seconds": SECONDS, "swaps": swaps.len(), "last_version_serving": served,
        "frames_offered": offered, "frames_inferred": got.len(), "frames_dropped": dropped,
        "steady": { "frames": steady.len(), "p50_ms": percentile(steady.clone(), 0.5), "p99_ms": percentile(steady.clone(), 0.99) },
        "within_1s_of_a_swap": { "frames": during.len(), "p50_ms": percentile(during.clone(), 0.5), "p99_ms": percentile(during.clone(), 0.99) },
        "p99_ratio": percentile(during, 0.99) / percentile(steady, 0.99),
    });
    println!("{}", serde_json::to_string_pretty(&row).unwrap());
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    std::fs::write(
        results.join("edge-swap.json"),
        serde_json::to_string_pretty(&row).unwrap() + "\n",
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
