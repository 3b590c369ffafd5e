//! HTTPS: the API served with rustls from a certificate and key in PEM files (a mounted
//! `kubernetes.io/tls` Secret: `tls.crt`, `tls.key`), reloaded when the files change (the kubelet
//! swaps a Secret's files when it is updated, cert-manager renews before expiry), so a rotation
//! needs no restart and drops no connection.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;

/// Where the certificate and its key are, and how often to look for a new one.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_every: Duration,
}

/// How long in-flight requests may finish after `shutdown` resolves.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. The certificate is read at start (a bad file is an error here, not at the first
/// client) and again whenever either file changes.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    files: TlsFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = RustlsConfig::from_pem_file(&files.cert, &files.key)
        .await
        .map_err(|e| io_context(e, &files))?;
    let reloader = tokio::spawn(reload_on_change(config.clone(), files));
    let handle = Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.await;
            handle.graceful_shutdown(Some(DRAIN));
        }
    });
    listener.set_nonblocking(true)?;
    let served = axum_server::tls_rustls::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    reloader.abort();
    served
}

fn io_context(e: std::io::Error, files: &TlsFiles) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!(
            "the TLS certificate {} and key {}: {e}",
            files.cert.display(),
            files.key.display()
        ),
    )
}

/// The files' modification times (through the kubelet's symlinks).
fn stamp(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

async fn reload_on_change(config: RustlsConfig, files: TlsFiles) {
    let mut last = stamp(&files);
    let mut tick = tokio::time::interval(files.reload_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = stamp(&files);
        if now.is_none() || now == last {
            continue;
        }
        // A half-written pair (the certificate new, the key old) fails to load: the old one
        // stays in use and the next tick tries again.
        match config.reload_from_pem_file(&files.cert, &files.key).await {
            Ok(()) => {
                last = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %io_context(e, &files), "TLS certificate not reloaded yet; the previous one stays in use")
            }
        }
    }
}
