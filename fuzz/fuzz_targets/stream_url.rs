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

/// Whether `shown` is what may show of a URL whose part after `scheme://` is `rest` and that
/// holds secrets elsewhere: `scheme://` then a piece of `rest` (`?…` where a query was), or
/// `scheme://…`. (A piece of `rest`, not "the password is not in it": characters of the scheme and
/// of the host can join into any short string.)
fn shows_only(shown: &str, scheme: &str, rest: &str) -> bool {
    let Some(tail) = shown.strip_prefix(scheme).and_then(|t| t.strip_prefix("://")) else {
        return false;
    };
    let tail = tail.strip_suffix("?…").unwrap_or(tail);
    tail == "…" || rest.contains(tail)
}

fuzz_target!(|data: &[u8]| {
    let [scheme, user, password, rest] = lines(data);
    let scheme = if scheme.is_empty() { "rtsp".to_string() } else { scheme };
    if scheme.contains("://") {
        // Not a scheme: the URL would split elsewhere.
        return;
    }
    // The password in the URL's user information.
    let url = format!("{scheme}://{user}:{password}@{rest}");
    let shown = redact(&url);
    assert!(shows_only(&shown, &scheme, &rest), "{url:?} shown as {shown:?}");
    // A secret in the query.
    let with_query = format!("{scheme}://{rest}?token={password}");
    let shown = redact(&with_query);
    assert!(shows_only(&shown, &scheme, &rest), "{with_query:?} shown as {shown:?}");
    // Credentials from a Secret, put into the URL FFmpeg opens: shown, they do not show.
    let mut config = SourceConfig::new(format!("{scheme}://{rest}"));
    config.credentials = Some(Credentials {
        username: user.clone(),
        password: password.clone(),
    });
    let connection = connection_url(&config);
    let opened = config.url.strip_prefix("file://").unwrap_or(&config.url);
    match opened.split_once("://") {
        Some((scheme, rest)) => {
            let shown = redact(&connection);
            assert!(shows_only(&shown, scheme, rest), "{connection:?} shown as {shown:?}");
        }
        // A path: nothing to put credentials into.
        None => assert_eq!(connection, opened),
    }
});
