//! The annotator's HTTP API with any request: JPEG and PNG bodies, multipart with offsets, Open
//! Inference Protocol JSON (UINT8 tensors and base64 images), any query, idempotency key, caller
//! and token. The whole router runs (admission, auth, limits, decoding, batching, the answer):
//! every answer is one the API documents with a JSON body, never a panic and never a 500 (a panic
//! while decoding shows as one).
//!
//! The input: a route byte, an auth byte, then `key \n caller \n query \n body`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use autotuner_annotator::api::{AnnotateResponse, ErrorBody, ModelInfo};
use autotuner_annotator::batcher::{BatchConfig, Model};
use autotuner_annotator::server::{ServerConfig, serve_model};
use autotuner_detect::{BBox, DetectOptions, Detection, RgbImage};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

/// In place of the teacher: the fuzzer exercises everything around the model, thousands of
/// requests a second. One box over each image, so the answer's offsets are exercised too.
struct OneBoxPerImage;

impl Model for OneBoxPerImage {
    fn detect(&mut self, images: &[RgbImage<'_>], _: &DetectOptions) -> Result<Vec<Vec<Detection>>, String> {
        Ok(images
            .iter()
            .map(|i| {
                vec![Detection {
                    bbox: BBox::new(0.0, 0.0, i.width as f32, i.height as f32),
                    class_id: 1,
                    score: 0.9,
                }]
            })
            .collect())
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let batch = BatchConfig {
            max_batch: 8,
            max_wait: Duration::ZERO,
            queue: 32,
            ..BatchConfig::default()
        };

        let model = ModelInfo {
            name: "teacher".into(),
            version: "1".into(),
            device: "cpu".into(),
        };
        let config = ServerConfig {
            max_body_bytes: 1 << 20,
            max_pixels: 1 << 20,
            max_images: 8,
            token: Some(TOKEN.into()),
            ..ServerConfig::new(model)
        };
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            app: serve_model(OneBoxPerImage, batch, config).0,
        }
    })
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let [route, auth, rest @ ..] = data else { return };
    let (key, rest) = split_line(rest);
    let (caller, rest) = split_line(rest);
    let (query, body) = split_line(rest);
    let query = String::from_utf8_lossy(query);
    let (path, content_type, annotate) = match route % 6 {
        0 => ("/v1/annotate", "image/jpeg", true),
        1 => ("/v1/annotate", "image/png", true),
        // The seeds' multipart bodies use this boundary.
        2 => ("/v1/annotate", "multipart/form-data; boundary=fuzzboundary", true),
        3 => ("/v2/models/teacher/infer", "application/json", false),
        4 => ("/v2/models/teacher/versions/1/infer", "application/json", false),
        _ => ("/v1/annotate", "text/plain", true),
    };
    // Characters a URI cannot hold make no request at all: that is the HTTP layer's refusal.
    let Ok(uri) = format!("{path}?{query}").parse::<axum::http::Uri>() else { return };
    let mut request = Request::post(uri).header("content-type", content_type);
    match auth % 3 {
        0 => request = request.header("authorization", format!("Bearer {TOKEN}")),
        1 => request = request.header("authorization", "Bearer not-the-token"),
        _ => {}
    }
    if !key.is_empty() {
        request = request.header("idempotency-key", key);
    }
    if !caller.is_empty() {
        request = request.header("autotuner-caller", caller);
    }
    // A header value the HTTP layer refuses makes no request either.
    let Ok(request) = request.body(Body::from(body.to_vec())) else { return };

    let h = harness();
    let (status, body) = h.runtime.block_on(async {
        let response = h.app.clone().oneshot(request).await.expect("the router answers");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the answer's body");
        (status, body)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "500: {}",
        String::from_utf8_lossy(&body)
    );
    if status == StatusCode::OK {
        if annotate {
            let answer: AnnotateResponse = serde_json::from_slice(&body).expect("an annotate answer");
            assert!(!answer.images.is_empty());
            for image in &answer.images {
                // The one box covers the image, moved by its offset.
                let [x0, y0, ..] = image.labels[0].bbox;
                assert_eq!([x0, y0], [image.offset[0] as f32, image.offset[1] as f32]);
            }
        } else {
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("an inference answer");
            assert!(answer["outputs"].is_array());
        }
    } else {
        let error: ErrorBody = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: not an error body ({e}): {}", String::from_utf8_lossy(&body)));
        assert!(!error.error.is_empty());
    }
});
