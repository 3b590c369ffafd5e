//! The client the capture worker labels its crops with: one request per batch of crops, an
//! idempotency key so that a retried request is not labelled twice, and retries with exponential
//! backoff and full jitter on 429 (honouring `Retry-After`), 5xx, timeouts and connection errors.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use thiserror::Error;

use crate::api::{AnnotateResponse, CALLER_HEADER, ErrorBody};

/// An encoded crop and where it sits in its frame.
#[derive(Debug, Clone)]
pub struct Crop {
    /// JPEG or PNG bytes.
    pub image: Vec<u8>,
    pub content_type: &'static str,
    pub offset: [u32; 2],
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("the annotator refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the annotator did not answer after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("bad annotator URL or client setup: {0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    retry: RetryPolicy,
    /// Per request.
    timeout: Duration,
    /// Who this client labels for (`Autotuner-Caller`): the annotator shares itself fairly by it.
    caller: Option<String>,
}

impl Client {
    /// A client of the annotator at `base_url` (`http://annotator:8080`).
    pub fn new(
        base_url: &str,
        token: Option<String>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, ClientError> {
        // rustls needs a crypto provider; installing one twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let url = format!("{}/v1/annotate", base_url.trim_end_matches('/'));
        reqwest::Url::parse(&url).map_err(|e| ClientError::Setup(format!("{url}: {e}")))?;
        Ok(Self {
            http,
            url,
            token,
            retry,
            timeout,
            caller: None,
        })
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM certificates: the annotator's
    /// issuer, from a Secret) for an `https://` annotator, instead of the system's roots.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Setup(format!("the annotator's CA certificate: {e}")))?;
        if certificates.is_empty() {
            return Err(ClientError::Setup(
                "the annotator's CA certificate: no PEM certificate in it".into(),
            ));
        }
        self.http = reqwest::Client::builder()
            .timeout(self.timeout)
            .tls_certs_only(certificates)
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(self)
    }

    /// Names the caller (a camera: `namespace/name`) in every request, so that the annotator
    /// shares its queue fairly between cameras rather than between addresses.
    pub fn with_caller(mut self, caller: impl Into<String>) -> Self {
        self.caller = Some(caller.into());
        self
    }

    /// Labels `crops`; the same `idempotency_key` must be used for retries of the same crops.
    pub async fn annotate(
        &self,
        crops: &[Crop],
        classes: &[String],
        min_score: Option<f32>,
        idempotency_key: &str,
    ) -> Result<AnnotateResponse, ClientError> {
        let offsets: Vec<[u32; 2]> = crops.iter().map(|c| c.offset).collect();
        let offsets = serde_json::to_string(&offsets).expect("offsets serialise");
        let mut url = reqwest::Url::parse(&self.url).map_err(|e| ClientError::Setup(e.to_string()))?;
        if !classes.is_empty() {
            url.query_pairs_mut().append_pair("classes", &classes.join(","));
        }
        if let Some(s) = min_score {
            url.query_pairs_mut().append_pair("min_score", &s.to_string());
        }
        let mut last = String::new();
        let mut jitter = Jitter::new(idempotency_key);
        for attempt in 1..=self.retry.attempts {
            let mut form = Form::new().text("offsets", offsets.clone());
            for crop in crops {
                let part = Part::bytes(crop.image.clone())
                    .mime_str(crop.content_type)
                    .map_err(|e| ClientError::Setup(e.to_string()))?;
                form = form.part("image", part);
            }
            let mut request = self
                .http
                .post(url.clone())
                .header("Idempotency-Key", idempotency_key)
                .multipart(form);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(caller) = &self.caller {
                request = request.header(CALLER_HEADER, caller);
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .json::<AnnotateResponse>()
                        .await
                        .map_err(|e| ClientError::Refused {
                            status: 200,
                            message: format!("unreadable answer: {e}"),
                        });
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let message = response
                        .json::<ErrorBody>()
                        .await
                        .map(|b| b.error)
                        .unwrap_or_else(|_| status.to_string());
                    if !(status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) {
                        return Err(ClientError::Refused {
                            status: status.as_u16(),
                            message,
                        });
                    }
                    last = format!("{status}: {message}");
                    retry_after
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            if attempt == self.retry.attempts {
                break;
            }
            let backoff = self
                .retry
                .base
                .saturating_mul(1 << (attempt - 1))
                .min(self.retry.cap);
            let delay = wait.unwrap_or(Duration::ZERO).max(jitter.up_to(backoff));
            tracing::debug!(attempt, ?delay, error = %last, "annotate: retrying");
            tokio::time::sleep(delay).await;
        }
        Err(ClientError::Unavailable {
            attempts: self.retry.attempts,
            last,
        })
    }
}

/// Full jitter: a uniform delay in `0..=limit`, from a small generator seeded per request.
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Self((hash ^ nanos) | 1)
    }

    fn up_to(&mut self, limit: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        limit.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}
