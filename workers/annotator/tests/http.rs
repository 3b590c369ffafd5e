//! The annotator over real HTTP on loopback, with the real teacher (YOLOv12n on ONNX Runtime):
//! answers, every error class, auth, the Open Inference Protocol v2, batching under concurrent
//! load, a full queue, fairness between cameras, idempotent retries, the client's retries, HTTPS
//! with a renewed certificate, and graceful shutdown.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use autotuner_annotator::api::{AnnotateResponse, ModelInfo};
use autotuner_annotator::batcher::{BatchConfig, Batcher};
use autotuner_annotator::client::{Client, ClientError, Crop, RetryPolicy};
use autotuner_annotator::metrics::Metrics;
use autotuner_annotator::server::{ServerConfig, routers};
use autotuner_annotator::tls::{self, TlsFiles};
use autotuner_detect::{Detector, DevicePreference, Family, Runtime};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("models/yolov12n.onnx").is_file(),
        "run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

/// Frame 401 + `i` of vtest.avi as JPEG.
fn frame_jpeg(i: u64) -> Vec<u8> {
    let (w, h) = (768u32, 576u32);
    let mut f = std::fs::File::open(assets().join("vtest-768x576-401-795.rgb")).unwrap();
    f.seek(SeekFrom::Start(i * (w * h * 3) as u64)).unwrap();
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    f.read_exact(&mut rgb).unwrap();
    encode(
        image::RgbImage::from_raw(w, h, rgb).unwrap(),
        image::ImageFormat::Jpeg,
    )
}

fn encode(img: image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn crop_jpeg(jpeg: &[u8], x: u32, y: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::load_from_memory(jpeg).unwrap().into_rgb8();
    encode(
        image::imageops::crop_imm(&img, x, y, w, h).to_image(),
        image::ImageFormat::Jpeg,
    )
}

struct Server {
    url: String,
    /// Beside an HTTPS API: the probes and `/metrics` over plain HTTP (`--metrics-listen`).
    plain_url: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    async fn start(batch: BatchConfig, adjust: impl FnOnce(&mut ServerConfig)) -> Server {
        Self::start_with(batch, adjust, None).await
    }

    /// The same over HTTPS (`tls::serve`, as `autotuner-annotator --tls-cert-file` runs it).
    async fn start_tls(files: TlsFiles) -> Server {
        Self::start_with(BatchConfig::default(), |_| {}, Some(files)).await
    }

    async fn start_with(
        batch: BatchConfig,
        adjust: impl FnOnce(&mut ServerConfig),
        tls: Option<TlsFiles>,
    ) -> Server {
        let runtime = Runtime::load(&assets().join("libonnxruntime.so")).unwrap();
        let detector = Detector::load(
            &runtime,
            &assets().join("models/yolov12n.onnx"),
            Family::Yolo,
            DevicePreference::Auto,
        )
        .unwrap();
        let model = ModelInfo {
            name: "yolov12n".into(),
            version: "1".into(),
            device: detector.device().as_str().into(),
        };
        let metrics = Metrics::new();
        let (batcher, worker) = Batcher::start(detector, batch, metrics.clone());
        let mut config = ServerConfig::new(model);
        adjust(&mut config);
        let (app, observability) = routers(config, batcher, metrics);
        let mut plain_url = None;
        if tls.is_some() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            plain_url = Some(format!("http://{}", listener.local_addr().unwrap()));
            tokio::spawn(async move { axum::serve(listener, observability).await.unwrap() });
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            stopped.await.ok();
        };
        let done = tokio::spawn(async move {
            match tls {
                Some(files) => tls::serve(listener, app, files, stopped).await.unwrap(),
                None => {
                    listener.set_nonblocking(true).unwrap();
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                        .unwrap();
                }
            }
        });
        Server {
            url,
            plain_url,
            stop: Some(stop),
            done,
            worker: Some(worker),
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        (&mut self.done).await.unwrap();
        let worker = self.worker.take().unwrap();
        tokio::task::spawn_blocking(move || worker.join().unwrap())
            .await
            .unwrap();
    }
}

/// The annotator's /metrics text.
async fn metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Whether the metrics text has exactly this line.
fn has_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    http()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn annotates_images_and_crops_in_frame_coordinates() {
    let server = Server::start(BatchConfig::default(), |_| {}).await;
    let jpeg = frame_jpeg(0);
    let r = post(
        &format!("{}/v1/annotate?classes=person&min_score=0.4", server.url),
        "image/jpeg",
        jpeg.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let whole: AnnotateResponse = r.json().await.unwrap();
    assert_eq!(whole.model.name, "yolov12n");
    assert_eq!(
        whole.model.device, "cpu",
        "this machine has no GPU: the CPU fallback is used"
    );
    let people = &whole.images[0].labels;
    assert!(people.len() >= 3, "{people:?}");
    assert!(people.iter().all(|l| l.class == "person" && l.score >= 0.4));
    // The right half of the frame as a crop: the same people there, at frame coordinates.
    let right = crop_jpeg(&jpeg, 384, 0, 384, 576);
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(right)
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .text("offsets", "[[384, 0]]");
    let r = http()
        .post(format!("{}/v1/annotate?classes=person&min_score=0.4", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cropped: AnnotateResponse = r.json().await.unwrap();
    let labels = &cropped.images[0].labels;
    assert_eq!(cropped.images[0].offset, [384, 0]);
    assert!(
        !labels.is_empty() && labels.iter().all(|l| l.bbox[0] >= 384.0),
        "{labels:?}"
    );
    // Each person found in the crop is near one found in the whole frame.
    for l in labels.iter().filter(|l| l.bbox[0] > 400.0 && l.bbox[2] < 760.0) {
        assert!(
            people
                .iter()
                .any(|p| (p.bbox[0] - l.bbox[0]).abs() < 12.0 && (p.bbox[3] - l.bbox[3]).abs() < 12.0),
            "{l:?} not in {people:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_4xx_answers() {
    let server = Server::start(BatchConfig::default(), |c| {
        c.max_pixels = 800 * 600;
        c.max_body_bytes = 400_000;
    })
    .await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(1);
    let check = |r: reqwest::Response, status: u16, words: &'static str| async move {
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        let message = body["error"].as_str().unwrap().to_string();
        assert!(message.contains(words), "{message:?} should mention {words:?}");
    };
    check(
        post(&url, "text/plain", b"hello".to_vec()).await,
        415,
        "image/jpeg",
    )
    .await;
    check(
        post(&url, "image/jpeg", b"definitely not a jpeg".to_vec()).await,
        400,
        "not a JPEG or PNG",
    )
    .await;
    check(
        post(&url, "image/jpeg", jpeg[..jpeg.len() / 3].to_vec()).await,
        400,
        "truncated",
    )
    .await;
    let big = encode(image::RgbImage::new(1000, 700), image::ImageFormat::Png);
    check(post(&url, "image/png", big).await, 413, "pixels").await;
    let r = post(&url, "image/jpeg", vec![0xFF; 500_000]).await;
    assert_eq!(r.status(), 413, "body over the byte limit");
    check(
        post(
            &format!("{url}?classes=person,unicorn"),
            "image/jpeg",
            jpeg.clone(),
        )
        .await,
        400,
        "unicorn",
    )
    .await;
    check(
        post(&format!("{url}?min_score=2"), "image/jpeg", jpeg.clone()).await,
        400,
        "min_score",
    )
    .await;
    let form = reqwest::multipart::Form::new().text("picture", "x");
    let r = http().post(&url).multipart(form).send().await.unwrap();
    check(r, 400, "unexpected multipart field").await;
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(jpeg.clone())
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .text("offsets", "[[1, 2], [3, 4]]");
    check(
        http().post(&url).multipart(form).send().await.unwrap(),
        400,
        "2 offsets for 1 images",
    )
    .await;
    // Nothing of that hurt the service.
    assert_eq!(post(&url, "image/jpeg", jpeg).await.status(), 200);
    let metrics = metrics(&server.url).await;
    assert!(
        has_line(
            &metrics,
            r#"autotuner_annotator_requests_total{code="415",route="/v1/annotate"} 1"#
        ),
        "{metrics}"
    );
    assert!(has_line(
        &metrics,
        r#"autotuner_annotator_requests_total{code="200",route="/v1/annotate"} 1"#
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_guards_the_inference_routes() {
    let server = Server::start(BatchConfig::default(), |c| c.token = Some("s3cret-token".into())).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(2);
    let r = post(&url, "image/jpeg", jpeg.clone()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let wrong = http()
        .post(&url)
        .header("content-type", "image/jpeg")
        .bearer_auth("nope")
        .body(jpeg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http()
        .post(&url)
        .header("content-type", "image/jpeg")
        .bearer_auth("s3cret-token")
        .body(jpeg)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let infer = http()
        .post(format!("{}/v2/models/yolov12n/infer", server.url))
        .json(&json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(infer.status(), 401);
    for open in [
        "/healthz",
        "/readyz",
        "/v2/health/ready",
        "/metrics",
        "/v2/models/yolov12n",
    ] {
        assert_eq!(
            http()
                .get(format!("{}{open}", server.url))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{open}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_inference_protocol_v2() {
    let server = Server::start(BatchConfig::default(), |_| {}).await;
    let base = &server.url;
    assert_eq!(
        http()
            .get(format!("{base}/v2/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(format!("{base}/v2/models/yolov12n/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let meta: Value = http()
        .get(format!("{base}/v2/models/yolov12n"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["name"], "yolov12n");
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["parameters"]["device"], "cpu");
    assert_eq!(
        http()
            .get(format!("{base}/v2/models/resnet"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let jpeg = frame_jpeg(3);
    let request = json!({
        "id": "frame-404",
        "parameters": { "classes": "person", "min_score": 0.4 },
        "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES",
                     "data": [base64::engine::general_purpose::STANDARD.encode(&jpeg)] }],
    });
    let r = http()
        .post(format!("{base}/v2/models/yolov12n/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["id"], "frame-404");
    let outputs = answer["outputs"].as_array().unwrap();
    let n = outputs[1]["shape"][0].as_u64().unwrap();
    assert!(n >= 3, "{answer}");
    assert_eq!(outputs[0]["shape"], json!([n, 4]));
    assert_eq!(outputs[0]["data"].as_array().unwrap().len() as u64, 4 * n);
    assert!(
        outputs[3]["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l == "person")
    );

    // A raw UINT8 tensor: a tiny gray image has no people, but is a valid request.
    let tiny = json!({ "inputs": [{ "name": "image", "shape": [2, 3, 3], "datatype": "UINT8", "data": vec![128; 18] }] });
    let r = http()
        .post(format!("{base}/v2/models/yolov12n/versions/1/infer"))
        .json(&tiny)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (bad, words) in [
        (
            json!({ "inputs": [{ "name": "image", "shape": [2, 3, 3], "datatype": "FP32", "data": [] }] }),
            "datatype",
        ),
        (
            json!({ "inputs": [{ "name": "image", "shape": [2, 3, 3], "datatype": "UINT8", "data": [1, 2] }] }),
            "values for shape",
        ),
        (
            json!({ "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"] }] }),
            "base64",
        ),
        (json!({ "nothing": true }), "not an inference request"),
        // Sides whose product overflows, and empty images, are refused, not run.
        (
            json!({ "inputs": [{ "name": "image", "shape": [4294967296u64, 4294967296u64, 3], "datatype": "UINT8", "data": [] }] }),
            "huge side",
        ),
        (
            json!({ "inputs": [{ "name": "image", "shape": [0, 5, 3], "datatype": "UINT8", "data": [] }] }),
            "no pixels",
        ),
        (
            json!({ "inputs": [{ "name": "image", "shape": [-1, 5, 3], "datatype": "UINT8", "data": [] }] }),
            "negative",
        ),
        (
            json!({ "inputs": [{ "name": "image", "shape": [1, 1, 3], "datatype": "UINT8", "data": [1, 2, 300] }] }),
            "0..255",
        ),
    ] {
        let r = http()
            .post(format!("{base}/v2/models/yolov12n/infer"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(words), "{body}");
    }
    // None of that hurt the model.
    let r = http()
        .post(format!("{base}/v2/models/yolov12n/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        http()
            .get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched() {
    let batch = BatchConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(100),
        // Batches as large as arrive: the batching is what is tested.
        max_batch_time: Duration::MAX,
        queue: 64,
    };
    let server = Server::start(batch, |_| {}).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpegs: Vec<Vec<u8>> = (0..16).map(|i| frame_jpeg(i * 10)).collect();
    let answers = futures::future::join_all(jpegs.into_iter().map(|j| {
        let url = url.clone();
        async move { post(&url, "image/jpeg", j).await }
    }))
    .await;
    let mut largest = 0;
    for r in answers {
        assert_eq!(r.status(), 200);
        let a: AnnotateResponse = r.json().await.unwrap();
        largest = largest.max(a.batch_images);
        assert!(!a.images[0].labels.is_empty());
    }
    assert!(largest > 1, "16 concurrent requests ran one by one");
    let metrics = metrics(&server.url).await;
    assert!(
        has_line(&metrics, "autotuner_annotator_images_total 16"),
        "{metrics}"
    );
    let batches: f64 = metrics
        .lines()
        .find(|l| l.starts_with("autotuner_annotator_batch_images_count"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches < 16.0, "{batches} batches for 16 images");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after_and_nothing_fails() {
    let batch = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue: 2,
        ..BatchConfig::default()
    };
    let server = Server::start(batch, |_| {}).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(5);
    let answers = futures::future::join_all((0..24).map(|_| post(&url, "image/jpeg", jpeg.clone()))).await;
    let (mut ok, mut refused) = (0, 0);
    for r in answers {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_camera_gets_the_refusals_and_a_quiet_one_is_served() {
    // One image a batch and few slots: the busy camera fills both the slots and the queue.
    let batch = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue: 4,
        ..BatchConfig::default()
    };
    let server = Server::start(batch, |c| c.max_in_flight = 8).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(5);
    let send = |caller: &'static str| {
        let (url, jpeg) = (url.clone(), jpeg.clone());
        async move {
            http()
                .post(&url)
                .header("content-type", "image/jpeg")
                .header(autotuner_annotator::api::CALLER_HEADER, caller)
                .body(jpeg)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let busy = tokio::spawn(futures::future::join_all((0..24).map(|_| send("ns/busy"))));
    // The quiet camera comes while the busy one holds every slot and fills the queue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        assert_eq!(send("ns/quiet").await, 200, "the quiet camera's request {i}");
    }
    let busy = busy.await.unwrap();
    let refused = busy.iter().filter(|s| **s == 429).count();
    assert!(busy.iter().all(|s| *s == 200 || *s == 429), "{busy:?}");
    assert!((1..24).contains(&refused), "the busy camera: {busy:?}");
    server.stop().await;
}

/// A throwaway certificate authority.
struct Authority {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Self {
            cert_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The annotator's certificate and key for 127.0.0.1, written where `files` says (the key
    /// first, as a Secret's update may land).
    fn issue(&self, files: &TlsFiles) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_only_a_client_that_trusts_the_issuer_is_served_and_a_renewed_certificate_is_used() {
    let dir = std::env::temp_dir().join(format!("autotuner-annotator-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        reload_every: Duration::from_millis(100),
    };
    let first = Authority::new("first CA");
    first.issue(&files);
    let server = Server::start_tls(files.clone()).await;
    let once = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    };
    let client = |ca: Option<&Authority>| {
        let c = Client::new(&server.url, None, Duration::from_secs(30), once.clone()).unwrap();
        match ca {
            Some(ca) => c.with_ca_pem(ca.cert_pem.as_bytes()).unwrap(),
            None => c,
        }
    };
    let crop = Crop {
        image: frame_jpeg(3),
        content_type: "image/jpeg",
        offset: [0, 0],
    };
    let labelled = client(Some(&first))
        .annotate(std::slice::from_ref(&crop), &["person".into()], None, "tls-1")
        .await
        .unwrap();
    assert!(!labelled.images[0].labels.is_empty());
    // The system's roots do not vouch for the annotator's issuer: no labels, however often asked.
    match client(None)
        .annotate(std::slice::from_ref(&crop), &[], None, "tls-2")
        .await
    {
        Err(ClientError::Unavailable { .. }) => {}
        other => panic!("a client without the CA got {other:?}"),
    }
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = http()
        .get(format!("{}/healthz", server.url.replacen("https", "http", 1)))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // The probes and the metrics are on the plain port, the API is not.
    let plain_url = server.plain_url.clone().unwrap();
    assert!(has_line(
        &metrics(&plain_url).await,
        "autotuner_annotator_images_total 1"
    ));
    for probe in ["/healthz", "/readyz", "/v2/health/ready"] {
        let r = http().get(format!("{plain_url}{probe}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    assert_eq!(
        post(
            &format!("{plain_url}/v1/annotate"),
            "image/jpeg",
            crop.image.clone()
        )
        .await
        .status(),
        404
    );
    // A renewed certificate from another issuer, written over the files: new connections get it.
    let second = Authority::new("second CA");
    second.issue(&files);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let renewed = client(Some(&second))
            .annotate(std::slice::from_ref(&crop), &[], None, "tls-3")
            .await;
        if renewed.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served: {renewed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match client(Some(&first))
        .annotate(std::slice::from_ref(&crop), &[], None, "tls-4")
        .await
    {
        Err(ClientError::Unavailable { .. }) => {}
        other => panic!("the old issuer still vouches for the annotator: {other:?}"),
    }
    // A CA file that holds no certificate is a setup error, not a client without TLS.
    assert!(matches!(
        Client::new(&server.url, None, Duration::from_secs(1), once.clone())
            .unwrap()
            .with_ca_pem(b"not a certificate"),
        Err(ClientError::Setup(_))
    ));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_with_the_same_key_are_not_labelled_twice() {
    let server = Server::start(BatchConfig::default(), |_| {}).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(6);
    let send = || {
        http()
            .post(&url)
            .header("content-type", "image/jpeg")
            .header("idempotency-key", "cam-1/frame-407")
            .body(jpeg.clone())
            .send()
    };
    let first = send().await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.text().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first);
    let metrics = metrics(&server.url).await;
    assert!(
        has_line(&metrics, "autotuner_annotator_images_total 1"),
        "{metrics}"
    );
    // The same key for a different request is a client bug: 409, not the first request's labels.
    let other = http()
        .post(format!("{url}?min_score=0.9"))
        .header("content-type", "image/jpeg")
        .header("idempotency-key", "cam-1/frame-407")
        .body(jpeg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 409);
    let long = "k".repeat(500);
    let r = http()
        .post(&url)
        .header("content-type", "image/jpeg")
        .header("idempotency-key", long)
        .body(jpeg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_retries_what_may_succeed_and_stops_on_what_cannot() {
    let batch = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue: 1,
        ..BatchConfig::default()
    };
    let server = Server::start(batch, |c| c.token = Some("t".into())).await;
    let retry = RetryPolicy {
        attempts: 8,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(400),
    };
    let client = Client::new(
        &server.url,
        Some("t".into()),
        Duration::from_secs(30),
        retry.clone(),
    )
    .unwrap();
    let jpeg = frame_jpeg(7);
    let crop = Crop {
        image: jpeg.clone(),
        content_type: "image/jpeg",
        offset: [0, 0],
    };
    // Eight clients at once against a queue of one: 429s happen, retries get everyone through.
    let answers = futures::future::join_all((0..8).map(|i| {
        let client = client.clone();
        let crop = crop.clone();
        async move {
            client
                .annotate(&[crop], &["person".into()], Some(0.4), &format!("k{i}"))
                .await
        }
    }))
    .await;
    for a in answers {
        assert!(!a.unwrap().images[0].labels.is_empty());
    }
    let metrics = metrics(&server.url).await;
    assert!(
        metrics.contains(r#"code="429""#),
        "the queue did overflow: {metrics}"
    );
    // A client error is not retried.
    let bad = Client::new(
        &server.url,
        Some("wrong".into()),
        Duration::from_secs(5),
        retry.clone(),
    )
    .unwrap();
    match bad.annotate(std::slice::from_ref(&crop), &[], None, "k").await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
    server.stop().await;
    // Nobody listening: retried, then reported.
    let gone = Client::new(
        "http://127.0.0.1:9",
        None,
        Duration::from_secs(1),
        RetryPolicy { attempts: 3, ..retry },
    )
    .unwrap();
    match gone.annotate(&[crop], &[], None, "k").await {
        Err(ClientError::Unavailable { attempts: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_requests_in_flight() {
    let batch = BatchConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(1500),
        queue: 8,
        ..BatchConfig::default()
    };
    let server = Server::start(batch, |_| {}).await;
    let url = format!("{}/v1/annotate", server.url);
    let jpeg = frame_jpeg(8);
    // In flight: waiting in the batcher for more images when the shutdown starts.
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { post(&url, "image/jpeg", jpeg).await.status() }
    });
    loop {
        let metrics = metrics(&server.url).await;
        // The metrics request itself is one.
        if has_line(&metrics, "autotuner_annotator_requests_in_flight 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = server.url.clone();
    server.stop().await;
    assert_eq!(in_flight.await.unwrap(), 200);
    assert!(
        http().get(format!("{base}/healthz")).send().await.is_err(),
        "no new connections after shutdown"
    );
}
