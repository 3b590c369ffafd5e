//! How every binary of the project logs: `tracing` events to standard error, filtered by
//! `RUST_LOG` (else the binary's default), as JSON lines with `--log-json`
//! ([`crate::contract::ENV_LOG_JSON`], for a cluster's log pipeline) or as text, coloured only on
//! a terminal (a pod's log, `kubectl logs`, shows escape codes as text).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber; `default_directives` (such as `info,kube=warn`) apply when
/// `RUST_LOG` is unset or unreadable.
pub fn init(json: bool, default_directives: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
