//! Where `scripts/fetch-assets` keeps the models and footage it fetches: `$AUTOTUNER_ASSETS`, else
//! `assets/` in `$EDGE_AUTOTUNER_CACHE`, else in `$XDG_CACHE_HOME/edge-autotuner` or
//! `~/.cache/edge-autotuner`. Tests, benchmarks and the standalone mode find them here.

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUTOTUNER_ASSETS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("EDGE_AUTOTUNER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
                .join("edge-autotuner")
        });
    cache.join("assets")
}
