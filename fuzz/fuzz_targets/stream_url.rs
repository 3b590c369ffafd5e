//! Stream URLs and camera credentials, as a CameraTuning or the command line gives them: the URL
//! FFmpeg opens is built without a panic, and neither the URL shown in logs and reports nor that
//! of the connection, once shown, holds a password or a query's secrets, however odd the
//! characters in them.
//!
//! The input: `scheme \n user \n password \n rest`, where `rest` is the host, path and query.
#![no_main]

use autotuner_capture::source::{Credentials, SourceConfig, connection_url, redact};
use libfuzzer_sys::fuzz_target;

fn lines(data: &[u8]) -> [String; 4] {
    let mut parts = data.splitn(4, |b| *b == b'\n').map(|p| String::from_utf8_lossy(p).into_owned());
    std::array::from_fn(|_| parts.next().unwrap_or_default())
}

/// Whether `shown` gives `secret` away: only a secret long enough to mean something, that is not
/// also in the part of the URL that is meant to show.
fn leaks(shown: &str, secret: &str, visible: &str) -> bool {
    secret.len() >= 4 && shown.contains(secret) && !visible.contains(secret)
}

fuzz_target!(|data: &[u8]| {
    let [scheme, user, password, rest] = lines(data);
    let scheme = if scheme.is_empty() { "rtsp".to_string() } else { scheme };
    // The password in the URL's user information.
    let visible = format!("{scheme}://{rest}");
    let url = format!("{scheme}://{user}:{password}@{rest}");
    let shown = redact(&url);
    assert!(!leaks(&shown, &password, &visible), "{url:?} shown as {shown:?}");
    // A secret in the query.
    let with_query = format!("{scheme}://{rest}?token={password}");
    let shown = redact(&with_query);
    assert!(!leaks(&shown, &password, &visible), "{with_query:?} shown as {shown:?}");
    // Credentials from a Secret, put into the URL FFmpeg opens: shown, they do not show.
    let mut config = SourceConfig::new(format!("{scheme}://{rest}"));
    config.credentials = Some(Credentials {
        username: user.clone(),
        password: password.clone(),
    });
    let connection = connection_url(&config);
    let shown = redact(&connection);
    assert!(!leaks(&shown, &password, &visible), "{connection:?} shown as {shown:?}");
});
