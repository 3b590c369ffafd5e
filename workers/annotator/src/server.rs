//! The HTTP API: `POST /v1/annotate`, the Open Inference Protocol v2 (KServe/Triton REST) for the
//! same model, `/metrics`, `/healthz`, `/readyz`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use autotuner_detect::{DetectOptions, Detection, labels};
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::{Admission, Admitted};
use crate::api::{AnnotateResponse, CALLER_HEADER, ErrorBody, ImageLabels, Label, ModelInfo};
use crate::batcher::{Batcher, Caller, Failed, Health, Labelled, Refused};
use crate::images::{self, DecodeError, RgbBuffer};
use crate::metrics::{LABELLING_ROUTES, Metrics};

/// Limits and identity of a served model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model: ModelInfo,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most pixels in one request, all its images together (413 beyond).
    pub max_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// Bearer token required on the inference routes (none: open).
    pub token: Option<String>,
    pub default_min_score: f32,
    pub iou_threshold: f32,
    /// How long a request waits for the model before 503.
    pub timeout: Duration,
    /// Requests admitted at once (reading, decoding, queued, running); more get 429 before their
    /// body is read. Shared fairly between callers (`admission`): a caller under its share gets
    /// in over the bound, up to twice it in all. With the body and pixel limits this bounds the
    /// memory requests can take.
    pub max_in_flight: usize,
}

impl ServerConfig {
    pub fn new(model: ModelInfo) -> Self {
        Self {
            model,
            max_body_bytes: 16 << 20,
            max_pixels: 3840 * 2160,
            max_images: 64,
            token: None,
            default_min_score: 0.25,
            iou_threshold: 0.5,
            timeout: Duration::from_secs(30),
            max_in_flight: 40,
        }
    }
}

struct AppState {
    config: ServerConfig,
    batcher: Batcher,
    metrics: Metrics,
    replies: Mutex<ReplyCache>,
    admission: Arc<Admission>,
}

impl AppState {
    /// The idempotency cache, whatever a panicking holder left (its methods leave it whole).
    fn replies(&self) -> std::sync::MutexGuard<'_, ReplyCache> {
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Answers of recent requests by `Idempotency-Key`, so that a client's retry is not labelled
/// twice. An entry remembers a fingerprint of its request: the same key with another request is a
/// client bug, answered 409, never someone else's labels. Bounded in entries and bytes.
#[derive(Default)]
struct ReplyCache {
    order: VecDeque<String>,
    entries: HashMap<String, (u64, Bytes)>,
    bytes: usize,
}

const REPLY_CACHE_ENTRIES: usize = 1024;
const REPLY_CACHE_BYTES: usize = 32 << 20;
const MAX_KEY_LENGTH: usize = 200;

enum Cached {
    Miss,
    Hit(Bytes),
    Conflict,
}

impl ReplyCache {
    fn get(&self, key: &str, fingerprint: u64) -> Cached {
        match self.entries.get(key) {
            None => Cached::Miss,
            Some((f, body)) if *f == fingerprint => Cached::Hit(body.clone()),
            Some(_) => Cached::Conflict,
        }
    }

    fn put(&mut self, key: String, fingerprint: u64, body: Bytes) {
        if body.len() > REPLY_CACHE_BYTES / 4 {
            return;
        }
        self.bytes += body.len();
        if let Some((_, old)) = self.entries.insert(key.clone(), (fingerprint, body)) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(key);
        }
        while self.order.len() > REPLY_CACHE_ENTRIES || self.bytes > REPLY_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, body)) = self.entries.remove(&old) {
                self.bytes -= body.len();
            }
        }
    }
}

/// A fingerprint of what a request asks: its query and body.
fn fingerprint(query: &str, body_parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut h);
    for part in body_parts {
        part.hash(&mut h);
    }
    h.finish()
}

/// An error answer with a status and a message saying what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        let status = match e {
            DecodeError::TooManyPixels { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            DecodeError::NotAnImage | DecodeError::Corrupt(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The router of the whole API.
pub fn router(config: ServerConfig, batcher: Batcher, metrics: Metrics) -> Router {
    routers(config, batcher, metrics).0
}

/// The whole API over `model`, with a batcher and metrics of its own: what `main` assembles from
/// its flags, for the tests, benchmarks and fuzz target that serve a model in their process.
/// The batcher's worker ends once the router and every clone of the batcher are gone.
pub fn serve_model(
    model: impl crate::batcher::Model,
    batch: crate::batcher::BatchConfig,
    config: ServerConfig,
) -> (Router, Batcher, std::thread::JoinHandle<()>) {
    let metrics = Metrics::new();
    let (batcher, worker) = Batcher::start(model, batch, metrics.clone());
    (router(config, batcher.clone(), metrics), batcher, worker)
}

/// The whole API, and apart the probes and `/metrics` alone (`/healthz`, `/readyz`,
/// `/v2/health/*`, `/metrics`): for a plain-HTTP port beside an HTTPS API, which the kubelet
/// and Prometheus reach without the annotator's certificate.
pub fn routers(config: ServerConfig, batcher: Batcher, metrics: Metrics) -> (Router, Router) {
    let max_body = config.max_body_bytes;
    let admission = Admission::new(config.max_in_flight);
    let state = Arc::new(AppState {
        config,
        batcher,
        metrics,
        replies: Mutex::default(),
        admission,
    });
    let inference = Router::new()
        .route(LABELLING_ROUTES[0], post(annotate))
        .route(LABELLING_ROUTES[1], post(oip_infer))
        .route(LABELLING_ROUTES[2], post(oip_infer_version))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let observed = Observed {
        metrics: state.metrics.clone(),
        health: state.batcher.health(),
    };
    let api = Router::new()
        .merge(inference)
        .route("/v2", get(oip_server))
        .route("/v2/models/{name}", get(oip_model))
        .route("/v2/models/{name}/ready", get(oip_model_ready))
        .with_state(state)
        .merge(observability(observed.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(observed.metrics.clone(), record));
    let plain =
        observability(observed.clone()).layer(middleware::from_fn_with_state(observed.metrics, record));
    (api, plain)
}

/// What the probes and `/metrics` read. Not the batcher itself: a server of these alone must not
/// keep the inference thread's queue open once the API has stopped.
#[derive(Clone)]
struct Observed {
    metrics: Metrics,
    health: Health,
}

fn observability(observed: Observed) -> Router {
    Router::new()
        .route("/v2/health/live", get(ok))
        .route("/v2/health/ready", get(ready))
        .route("/healthz", get(ok))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(observed)
}

async fn ok() -> &'static str {
    "ok"
}

/// Ready while the inference thread runs: if it died, no request can succeed, and the probe
/// failing gets the pod out of the Service (and, with a liveness probe on it, restarted).
async fn ready(State(observed): State<Observed>) -> Response {
    if observed.health.is_alive() {
        "ok".into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inference thread has stopped: restart the annotator",
        )
        .into_response()
    }
}

/// Who sends a request: the `Autotuner-Caller` header the capture worker sets (its camera), else
/// the peer's address (behind a proxy that is the proxy's: set the header). The callers are
/// trusted workers with the token; the identity shares the annotator fairly between them, it is
/// not authentication.
fn caller(request: &Request) -> Caller {
    let named = request
        .headers()
        .get(CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.len() <= MAX_KEY_LENGTH);
    match named {
        Some(name) => Arc::from(name),
        None => match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => Arc::from(peer.ip().to_string()),
            None => Arc::from("unknown"),
        },
    }
}

/// Lets a request of `caller` in, or answers 429 when it has its share and the annotator is at
/// `max_in_flight`.
fn admit(state: &AppState, caller: &Caller) -> Result<Admitted, ApiError> {
    state.admission.admit(caller).ok_or_else(|| ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message:
            "the annotator is at capacity and this caller has its share: retry after the time in Retry-After"
                .into(),
        retry_after: Some(1),
    })
}

/// Keeps the in-flight gauge right even when a client disconnects and the request is dropped.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn metrics_text(State(observed): State<Observed>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        observed.metrics.render(),
    )
}

/// Counts every request by route and status, and times it.
async fn record(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let in_flight = InFlight::new(&metrics.in_flight);
    let response = next.run(request).await;
    drop(in_flight);
    metrics
        .request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <token from the annotator's token Secret>",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Equal without a timing signal of where they differ (`subtle`, the constant-time comparison
/// rustls itself uses); only the length can show.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[derive(Debug, Deserialize, Default)]
pub struct AnnotateQuery {
    /// Comma-separated class names.
    classes: Option<String>,
    min_score: Option<f32>,
}

fn options(
    state: &AppState,
    classes: Option<&str>,
    min_score: Option<f32>,
) -> Result<DetectOptions, ApiError> {
    let classes = match classes.map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(list) => {
            let names: Vec<&str> = list.split(',').collect();
            Some(labels::ids(&names).map_err(|unknown| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown class {unknown:?}: use COCO class names such as person, car"),
                )
            })?)
        }
    };
    let min_score = min_score.unwrap_or(state.config.default_min_score);
    if !(0.0..=1.0).contains(&min_score) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "min_score must be between 0 and 1",
        ));
    }
    Ok(DetectOptions {
        min_score,
        iou_threshold: state.config.iou_threshold,
        max_detections: 300,
        classes,
    })
}

fn queue_full() -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: "the annotator's queue is full and this caller has the most waiting: retry after the time in Retry-After"
            .into(),
        retry_after: Some(1),
    }
}

async fn label(
    state: &AppState,
    caller: &Caller,
    images: Vec<RgbBuffer>,
    options: DetectOptions,
) -> Result<Labelled, ApiError> {
    let receiver = state
        .batcher
        .submit(caller, images, options)
        .map_err(|refused| match refused {
            Refused::QueueFull => queue_full(),
            Refused::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the inference thread has stopped: the annotator must be restarted",
            ),
            Refused::BadImage => ApiError::new(StatusCode::BAD_REQUEST, "an image has no pixels"),
        })?;
    match tokio::time::timeout(state.config.timeout, receiver).await {
        Ok(Ok(Ok(labelled))) => Ok(labelled),
        Ok(Ok(Err(Failed::Shed))) => Err(queue_full()),
        Ok(Ok(Err(Failed::Inference(e)))) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference failed: {e}"),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the annotator is shutting down: retry",
        )),
        Err(_) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "timed out waiting for the model: retry later".into(),
            retry_after: Some(1),
        }),
    }
}

/// Decodes the images of one request, their pixels together within `max_pixels` (checked from
/// the headers before anything is decoded).
async fn decode_all(state: &AppState, bodies: Vec<Bytes>) -> Result<Vec<RgbBuffer>, ApiError> {
    let max_pixels = state.config.max_pixels;
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        for b in &bodies {
            let (w, h) = images::dimensions(b)?;
            total = total.saturating_add(w as u64 * h as u64);
            if total > max_pixels {
                return Err(DecodeError::TooManyPixels {
                    width: w,
                    height: h,
                    pixels: total,
                    limit: max_pixels,
                });
            }
        }
        bodies
            .iter()
            .map(|b| images::decode(b, max_pixels))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(ApiError::from)
}

fn to_label(d: &Detection, offset: [u32; 2]) -> Label {
    let b = d.bbox.offset(offset[0] as f32, offset[1] as f32);
    Label {
        bbox: [b.x0, b.y0, b.x1, b.y1],
        class_id: d.class_id,
        class: labels::name(d.class_id).unwrap_or("unknown").to_string(),
        score: d.score,
    }
}

/// `POST /v1/annotate`: a JPEG/PNG body, or `multipart/form-data` with `image` parts and an
/// optional `offsets` part (JSON `[[x, y], ...]`, one per image: where each crop sits in its frame).
async fn annotate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = caller(&request);
    let _admitted = admit(&state, &caller)?;
    // Parsed here rather than by an extractor, so that a bad query gets the API's JSON error.
    let Query(query) = Query::<AnnotateQuery>::try_from_uri(request.uri()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bad query ({}): use classes=person,car and min_score=0.5",
                e.body_text()
            ),
        )
    })?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LENGTH)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must have 1 to {MAX_KEY_LENGTH} characters"),
        ));
    }
    let options = options(&state, query.classes.as_deref(), query.min_score)?;
    let query_text = request.uri().query().unwrap_or("").to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (bodies, offsets) = if content_type.starts_with("image/jpeg") || content_type.starts_with("image/png")
    {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        (vec![body], None)
    } else if content_type.starts_with("multipart/form-data") {
        read_multipart(&state, request).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {content_type:?} is not supported: send image/jpeg, image/png or multipart/form-data"
            ),
        ));
    };
    if bodies.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no image in the request"));
    }
    let offsets = offsets.unwrap_or_else(|| vec![[0, 0]; bodies.len()]);
    if offsets.len() != bodies.len() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{} offsets for {} images", offsets.len(), bodies.len()),
        ));
    }
    let offsets_text = serde_json::to_string(&offsets).expect("offsets serialise");
    let print = key.as_ref().map(|_| {
        let mut parts: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        parts.push(offsets_text.as_bytes());
        fingerprint(&query_text, &parts)
    });
    if let (Some(key), Some(print)) = (&key, print) {
        match state.replies().get(key, print) {
            Cached::Miss => {}
            Cached::Hit(body) => {
                return Ok((
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::HeaderName::from_static("idempotent-replayed"), "true"),
                    ],
                    body,
                )
                    .into_response());
            }
            Cached::Conflict => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key was used for a different request: use one key per request",
                ));
            }
        }
    }
    let decoded = decode_all(&state, bodies).await?;
    let sizes: Vec<(u32, u32)> = decoded.iter().map(|d| (d.width, d.height)).collect();
    let labelled = label(&state, &caller, decoded, options).await?;
    let response = AnnotateResponse {
        model: state.config.model.clone(),
        inference_ms: labelled.inference.as_secs_f64() * 1e3,
        batch_images: labelled.batch_images,
        images: labelled
            .detections
            .iter()
            .zip(&offsets)
            .zip(&sizes)
            .enumerate()
            .map(|(index, ((found, offset), (width, height)))| ImageLabels {
                index,
                offset: *offset,
                width: *width,
                height: *height,
                labels: found.iter().map(|d| to_label(d, *offset)).collect(),
            })
            .collect(),
    };
    let body = Bytes::from(serde_json::to_vec(&response).expect("serialise"));
    if let (Some(key), Some(print)) = (key, print) {
        state.replies().put(key, print, body.clone());
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn read_multipart(
    state: &AppState,
    request: Request,
) -> Result<(Vec<Bytes>, Option<Vec<[u32; 2]>>), ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad multipart body: {}", e.body_text()),
        )
    })?;
    let (mut bodies, mut offsets) = (Vec::new(), None);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), format!("bad multipart body: {}", e.body_text())))?
    {
        match field.name() {
            Some("image") => {
                if bodies.len() == state.config.max_images {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "more than {} images in one request: split it",
                            state.config.max_images
                        ),
                    ));
                }
                bodies.push(
                    field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::new(e.status(), e.body_text()))?,
                );
            }
            Some("offsets") => {
                let text = field
                    .text()
                    .await
                    .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
                offsets = Some(serde_json::from_str::<Vec<[u32; 2]>>(&text).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("offsets must be JSON [[x, y], ...]: {e}"),
                    )
                })?);
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unexpected multipart field {other:?}: send `image` parts and an optional `offsets` part"
                    ),
                ));
            }
        }
    }
    Ok((bodies, offsets))
}

// --- Open Inference Protocol v2 ---------------------------------------------------------------

fn check_model(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.config.model.name {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no model {name:?}; this server has {:?}", state.config.model.name),
        ))
    }
}

async fn oip_server() -> Json<Value> {
    Json(json!({ "name": "autotuner-annotator", "version": env!("CARGO_PKG_VERSION"), "extensions": [] }))
}

async fn oip_model(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, &name)?;
    let m = &state.config.model;
    Ok(Json(json!({
        "name": m.name,
        "versions": [m.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{ "name": "image", "datatype": "UINT8", "shape": [-1, -1, 3] },
                   { "name": "image", "datatype": "BYTES", "shape": [1] }],
        "outputs": [{ "name": "boxes", "datatype": "FP32", "shape": [-1, 4] },
                    { "name": "scores", "datatype": "FP32", "shape": [-1] },
                    { "name": "classes", "datatype": "INT32", "shape": [-1] },
                    { "name": "labels", "datatype": "BYTES", "shape": [-1] }],
        "parameters": { "device": m.device },
    })))
}

async fn oip_model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<&'static str, ApiError> {
    check_model(&state, &name)?;
    Ok("ok")
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    inputs: Vec<InferInput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    shape: Vec<i64>,
    datatype: String,
    data: TensorData,
}

/// Tensor contents, typed while parsing: a UINT8 image is a byte per value in memory, not a
/// JSON value each.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TensorData {
    Bytes(Vec<u8>),
    Strings(Vec<String>),
}

async fn oip_infer_version(
    state: State<Arc<AppState>>,
    Path((name, _version)): Path<(String, String)>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    oip_infer(state, Path(name), request).await
}

/// One image per request: a UINT8 tensor `[H, W, 3]` or `[1, H, W, 3]` (RGB), or a BYTES tensor
/// holding one base64 JPEG/PNG. Parameters `classes` (comma-separated names) and `min_score`.
async fn oip_infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, &name)?;
    let caller = caller(&request);
    let _admitted = admit(&state, &caller)?;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let request: InferRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("not an inference request (UINT8 data must be integers 0..255, BYTES data strings): {e}"),
        )
    })?;
    drop(body);
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send exactly one input, the image",
        ));
    };
    let image = match (input.datatype.as_str(), &input.data) {
        ("UINT8", TensorData::Bytes(values)) => {
            let (h, w) = match input.shape.as_slice() {
                [1, h, w, 3] | [h, w, 3] => (*h, *w),
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("UINT8 shape {other:?} is not [H, W, 3]"),
                    ));
                }
            };
            let (Ok(h), Ok(w)) = (u32::try_from(h), u32::try_from(w)) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("UINT8 shape [{h}, {w}, 3] has a negative or huge side"),
                ));
            };
            let pixels = h as u64 * w as u64;
            if pixels == 0 {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "the image has no pixels"));
            }
            if pixels > state.config.max_pixels {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{w}x{h} exceeds the limit of {} pixels", state.config.max_pixels),
                ));
            }
            if values.len() as u64 != pixels * 3 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{} values for shape [{h}, {w}, 3]", values.len()),
                ));
            }
            RgbBuffer {
                data: values.clone(),
                width: w,
                height: h,
            }
        }
        ("BYTES", TensorData::Strings(values)) => {
            let [encoded] = values.as_slice() else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BYTES data must be [\"<base64 JPEG or PNG>\"]",
                ));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("BYTES data is not base64: {e}"))
                })?;
            decode_all(&state, vec![Bytes::from(bytes)]).await?.remove(0)
        }
        ("UINT8" | "BYTES", _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "UINT8 data must be integers 0..255 and BYTES data strings",
            ));
        }
        (other, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("datatype {other} is not UINT8 or BYTES"),
            ));
        }
    };
    let classes = request
        .parameters
        .get("classes")
        .and_then(Value::as_str)
        .map(str::to_string);
    let min_score = request
        .parameters
        .get("min_score")
        .and_then(Value::as_f64)
        .map(|v| v as f32);
    let options = options(&state, classes.as_deref(), min_score)?;
    let labelled = label(&state, &caller, vec![image], options).await?;
    let found = &labelled.detections[0];
    let n = found.len();
    Ok(Json(json!({
        "model_name": state.config.model.name,
        "model_version": state.config.model.version,
        "id": request.id,
        "parameters": { "device": state.config.model.device, "inference_ms": labelled.inference.as_secs_f64() * 1e3 },
        "outputs": [
            { "name": "boxes", "datatype": "FP32", "shape": [n, 4],
              "data": found.iter().flat_map(|d| [d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1]).collect::<Vec<_>>() },
            { "name": "scores", "datatype": "FP32", "shape": [n], "data": found.iter().map(|d| d.score).collect::<Vec<_>>() },
            { "name": "classes", "datatype": "INT32", "shape": [n], "data": found.iter().map(|d| d.class_id).collect::<Vec<_>>() },
            { "name": "labels", "datatype": "BYTES", "shape": [n],
              "data": found.iter().map(|d| labels::name(d.class_id).unwrap_or("unknown")).collect::<Vec<_>>() },
        ],
    })))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn only_the_same_token_matches() {
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret-token", b"s3cret-tokem"), "last byte");
        assert!(!constant_time_eq(b"s3cret-token", b"s3cret"), "a prefix");
        assert!(!constant_time_eq(b"", b"s3cret-token"));
    }
}
