//! One annotator (the real teacher, YOLOv12n on ONNX Runtime, over HTTP on loopback) shared by
//! 20 cameras, one of which sends ten times what each other one sends: does every camera get its
//! share of labels, who gets the refusals, and how long do the quiet cameras wait? Each camera
//! replays the capture worker's requests (multipart, three crops of real frames of vtest.avi with
//! their offsets) at its own rate, open loop, without retrying a refusal (so that refusals count).
//!
//! Two servers, one after the other: the annotator's defaults, and the same with batches of
//! eight images whatever they cost (the annotator before `max_batch_time`, the baseline). On
//! each: the quiet cameras alone (what they get without the busy one), then all twenty with every
//! camera named (`Autotuner-Caller`, as the capture worker sends it: fair queuing and admission by
//! camera), and on the defaults also with none named (every request from one caller: one
//! first-come-first-served queue, the annotator before fairness). The rates are set from the
//! larger of the two servers' measured capacities: the nineteen quiet cameras together ask for 70% of it, the busy one for ten times a quiet one's (another 37%, so 107% in all) in bursts of
//! ten (a backlog replayed at once): the annotator is overloaded and must refuse someone.
//!
//! `cargo bench -p autotuner-annotator --bench fairness` (after `scripts/fetch-assets`). Writes
//! bench-results/annotator-fairness.json.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autotuner_annotator::api::{CALLER_HEADER, ModelInfo};
use autotuner_annotator::batcher::BatchConfig;
use autotuner_annotator::server::{ServerConfig, serve_model};
use autotuner_detect::{Detector, DevicePreference, Family, Runtime};
use serde_json::json;

const CAMERAS: usize = 20;
const BUSY_FACTOR: f64 = 10.0;
const BURST: usize = 10;
const CROPS: usize = 3;
const SECONDS: u64 = 60;

/// One request: its crops (JPEG) and their offsets in the frame.
type Request = Vec<(Vec<u8>, [u32; 2])>;

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A request's crops: person-sized regions of real frames, as JPEG, with their offsets.
fn requests(count: usize) -> Vec<Request> {
    let (w, h) = (768usize, 576usize);
    let rgb = std::fs::read(autotuner_detect::assets::dir().join("vtest-768x576-401-795.rgb"))
        .expect("colour frames: run scripts/fetch-assets");
    (0..count)
        .map(|i| {
            let frame = &rgb[(i * 7) * w * h * 3..(i * 7 + 1) * w * h * 3];
            let img = image::RgbImage::from_raw(w as u32, h as u32, frame.to_vec()).unwrap();
            (0..CROPS)
                .map(|c| {
                    let (x, y) = (60 + 220 * c as u32, 150 + 40 * (i % 5) as u32);
                    let crop = image::imageops::crop_imm(&img, x, y, 160, 240).to_image();
                    let mut out = Cursor::new(Vec::new());
                    crop.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
                    (out.into_inner(), [x, y])
                })
                .collect()
        })
        .collect()
}

#[derive(Default, Debug)]
struct Tally {
    labelled_images: u64,
    ok: u64,
    refused: u64,
    other: u64,
    latencies: Vec<f64>,
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    caller: Option<&str>,
    crops: &[(Vec<u8>, [u32; 2])],
) -> (u16, f64) {
    let offsets: Vec<[u32; 2]> = crops.iter().map(|c| c.1).collect();
    let mut form = reqwest::multipart::Form::new().text("offsets", serde_json::to_string(&offsets).unwrap());
    for (jpeg, _) in crops {
        form = form.part(
            "image",
            reqwest::multipart::Part::bytes(jpeg.clone())
                .mime_str("image/jpeg")
                .unwrap(),
        );
    }
    let mut request = client.post(url).multipart(form);
    if let Some(caller) = caller {
        request = request.header(CALLER_HEADER, caller);
    }
    let started = Instant::now();
    let status = match request.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    };
    (status, started.elapsed().as_secs_f64())
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

struct Server {
    url: String,
}

async fn start_server(runtime: &Runtime, batch: BatchConfig) -> Server {
    let detector = Detector::load(
        runtime,
        &autotuner_detect::assets::dir().join("models/yolov12n.onnx"),
        Family::Yolo,
        DevicePreference::Cpu,
    )
    .unwrap();
    let info = ModelInfo {
        name: "yolov12n".into(),
        version: "1".into(),
        device: "cpu".into(),
    };
    let (app, _, _worker) = serve_model(detector, batch, ServerConfig::new(info));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/annotate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url }
}

/// Images a second the annotator labels when kept busy (8 requests always in flight).
async fn capacity(client: &reqwest::Client, url: &str, requests: &Arc<Vec<Request>>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, url, requests) = (client.clone(), url.to_string(), requests.clone());
            tokio::spawn(async move {
                let mut images = 0u64;
                let mut i = t;
                while Instant::now() < deadline {
                    let (status, _) = send(&client, &url, None, &requests[i % requests.len()]).await;
                    if status == 200 {
                        images += CROPS as u64;
                    }
                    i += 8;
                }
                images
            })
        })
        .collect();
    let started = Instant::now();
    let mut images = 0;
    for t in tasks {
        images += t.await.unwrap();
    }
    images as f64 / started.elapsed().as_secs_f64()
}

/// One run of `SECONDS`: each camera sends at its rate; `named` says whether it names itself,
/// `busy` whether camera 0 sends at all.
async fn run(
    client: &reqwest::Client,
    url: &str,
    requests: &Arc<Vec<Request>>,
    quiet_rate: f64,
    named: bool,
    busy: bool,
) -> Vec<Tally> {
    let tallies: Arc<Mutex<Vec<Tally>>> =
        Arc::new(Mutex::new((0..CAMERAS).map(|_| Tally::default()).collect()));
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for camera in (if busy { 0 } else { 1 })..CAMERAS {
        // Camera 0 is the busy one: ten times the rate, in bursts.
        let (burst, period) = if camera == 0 {
            (
                BURST,
                Duration::from_secs_f64(BURST as f64 / (quiet_rate * BUSY_FACTOR)),
            )
        } else {
            (1, Duration::from_secs_f64(1.0 / quiet_rate))
        };
        let (client, url, requests, tallies) =
            (client.clone(), url.to_string(), requests.clone(), tallies.clone());
        tasks.push(tokio::spawn(async move {
            let caller = named.then(|| format!("cameras/camera-{camera:02}"));
            // Spread the cameras' first requests over a period.
            tokio::time::sleep(period.mul_f64(camera as f64 / CAMERAS as f64)).await;
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = camera;
            let mut inflight = Vec::new();
            while Instant::now() < deadline {
                ticker.tick().await;
                for _ in 0..burst {
                    let (client, url, requests, tallies, caller) = (
                        client.clone(),
                        url.clone(),
                        requests.clone(),
                        tallies.clone(),
                        caller.clone(),
                    );
                    let crops = i % requests.len();
                    i += CAMERAS;
                    inflight.push(tokio::spawn(async move {
                        let (status, seconds) =
                            send(&client, &url, caller.as_deref(), &requests[crops]).await;
                        let mut tallies = tallies.lock().unwrap();
                        let t = &mut tallies[camera];
                        match status {
                            200 => {
                                t.ok += 1;
                                t.labelled_images += CROPS as u64;
                                t.latencies.push(seconds);
                            }
                            429 => t.refused += 1,
                            _ => t.other += 1,
                        }
                    }));
                }
            }
            for r in inflight {
                r.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tallies).unwrap().into_inner().unwrap()
}

fn summary(tallies: &mut [Tally], capacity: f64, quiet_rate: f64, idle_p99: f64) -> serde_json::Value {
    // Max-min fair shares of the capacity, in images a minute, given what each camera asks.
    let demand: Vec<f64> = (0..CAMERAS)
        .map(|c| if c == 0 { quiet_rate * BUSY_FACTOR } else { quiet_rate } * CROPS as f64 * 60.0)
        .collect();
    let mut fair = [0.0; CAMERAS];
    let mut left = capacity * 60.0;
    let mut open: Vec<usize> = (0..CAMERAS).collect();
    while !open.is_empty() {
        let each = left / open.len() as f64;
        let (met, unmet): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&c| demand[c] <= each);
        if met.is_empty() {
            for &c in &unmet {
                fair[c] = each;
            }
            break;
        }
        for &c in &met {
            fair[c] = demand[c];
            left -= demand[c];
        }
        open = unmet;
    }
    let minutes = SECONDS as f64 / 60.0;
    let share = |c: usize, t: &Tally| t.labelled_images as f64 / minutes / fair[c];
    let quiet: Vec<usize> = (1..CAMERAS).collect();
    let worst_quiet_share = quiet
        .iter()
        .map(|&c| share(c, &tallies[c]))
        .fold(f64::INFINITY, f64::min);
    let mut quiet_latencies: Vec<f64> = quiet.iter().flat_map(|&c| tallies[c].latencies.clone()).collect();
    let quiet_p99 = percentile(&mut quiet_latencies, 0.99);
    let busy_p99 = percentile(&mut tallies[0].latencies, 0.99);
    json!({
        "busy": {
            "labelledImagesPerMinute": tallies[0].labelled_images as f64 / minutes,
            "fairImagesPerMinute": fair[0],
            "share": share(0, &tallies[0]),
            "answered": tallies[0].ok, "refused429": tallies[0].refused, "otherErrors": tallies[0].other,
            "p99LatencySeconds": busy_p99,
        },
        "quiet": {
            "worstShareOfFair": worst_quiet_share,
            "fairImagesPerMinuteEach": fair[1],
            "labelledImagesPerMinute": quiet.iter().map(|&c| tallies[c].labelled_images as f64 / minutes).collect::<Vec<_>>(),
            "answered": quiet.iter().map(|&c| tallies[c].ok).sum::<u64>(),
            "refused429": quiet.iter().map(|&c| tallies[c].refused).sum::<u64>(),
            "otherErrors": quiet.iter().map(|&c| tallies[c].other).sum::<u64>(),
            "p99LatencySeconds": quiet_p99,
            "p99OverIdle": quiet_p99 / idle_p99,
        },
    })
}

fn main() {
    let runtime =
        Runtime::load(&autotuner_detect::assets::dir().join("libonnxruntime.so")).expect("ONNX Runtime");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = tokio.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        let requests = Arc::new(requests(40));
        // The annotator's defaults, and beside them the same with batches of eight images
        // whatever they cost (the baseline: the annotator before `max_batch_time`). The cameras'
        // rates are the same for both.
        let eights = BatchConfig {
            max_batch_time: Duration::MAX,
            ..BatchConfig::default()
        };
        let servers = [
            ("batchesOfEight", start_server(&runtime, eights).await),
            ("defaults", start_server(&runtime, BatchConfig::default()).await),
        ];
        // Each server alone first: its idle latency (one request at a time) and its capacity.
        let mut measured = Vec::new();
        for (_, server) in &servers {
            for r in requests.iter().take(3) {
                send(&client, &server.url, None, r).await;
            }
            let mut idle: Vec<f64> = Vec::new();
            for r in requests.iter().cycle().take(40) {
                idle.push(send(&client, &server.url, None, r).await.1);
            }
            measured.push((percentile(&mut idle, 0.99), capacity(&client, &server.url, &requests).await));
        }
        // The quiet cameras together ask for 70% of the larger capacity, so that the load
        // (107% in all) overloads both servers.
        let largest = measured.iter().map(|m| m.1).fold(0.0, f64::max);
        let quiet_rate = 0.7 * largest / CROPS as f64 / (CAMERAS - 1) as f64;
        let mut results = serde_json::Map::new();
        for ((name, server), (idle_p99, capacity)) in servers.iter().zip(measured) {
            println!(
                "{name}: capacity {capacity:.1} images/s; idle p99 {:.0} ms; a quiet camera sends a request every {:.1} s, the busy one {BURST} every {:.1} s",
                idle_p99 * 1e3,
                1.0 / quiet_rate,
                BURST as f64 / (quiet_rate * BUSY_FACTOR)
            );
            let mut by_mode = HashMap::new();
            let mut quiet_alone_p99 = f64::NAN;
            for (mode, named, busy) in [("quietAlone", true, false), ("oneQueue", false, true), ("byCamera", true, true)] {
                if mode == "oneQueue" && *name != "defaults" {
                    continue;
                }
                let mut tallies = run(&client, &server.url, &requests, quiet_rate, named, busy).await;
                let mut s = summary(&mut tallies, capacity, quiet_rate, idle_p99);
                let p99 = s["quiet"]["p99LatencySeconds"].as_f64().unwrap_or(f64::NAN);
                if !busy {
                    quiet_alone_p99 = p99;
                }
                s["quiet"]["p99OverQuietAlone"] = json!(p99 / quiet_alone_p99);
                println!("{name} {mode}: {s}");
                by_mode.insert(mode, s);
            }
            results.insert(
                name.to_string(),
                json!({
                    "capacityImagesPerSecond": capacity,
                    "idleP99LatencySeconds": idle_p99,
                    "quietRequestsPerSecondEach": quiet_rate,
                    "runs": by_mode,
                }),
            );
        }
        serde_json::Value::Object(results)
    });
    let cpu = autotuner_vision::cpu_model();
    let out = json!({
        "command": "cargo bench -p autotuner-annotator --bench fairness",
        "machine": cpu,
        "setup": format!("{CAMERAS} cameras (19 quiet at 70% of the capacity together, 1 busy) on loopback, {CROPS} crops of vtest.avi (160x240 JPEG) per multipart request, no retries; camera 0 sends {BUSY_FACTOR}x a quiet camera's requests in bursts of {BURST}; {SECONDS} s per run; the annotator's defaults (batches of up to 8 images or 50 ms of expected inference, a request's images in as many batches as that takes, 5 ms, queue 32, 40 in flight), and beside them batches of 8 whatever they cost (the annotator before max_batch_time); the cameras' rates from the larger of the two capacities"),
        "result": result,
    });
    let path = manifest_dir().join("../../bench-results/annotator-fairness.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
