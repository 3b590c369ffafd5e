//! Writes the operator's generated manifests (RBAC, from `rbac.rs`), or with `--check` fails
//! when a checked-in file differs from what the code generates.

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(_) => {
            eprintln!("usage: manifestgen [--check]");
            return ExitCode::from(2);
        }
    };
    let root = manifest_dir().join("../..");
    let mut stale = false;
    for (path, content) in autotuner_operator::rbac::generated_files() {
        let full = root.join(path);
        if check {
            if std::fs::read_to_string(&full).ok().as_deref() != Some(content.as_str()) {
                eprintln!(
                    "{path} is out of date; run `cargo run -p autotuner-operator --bin manifestgen` and commit it"
                );
                stale = true;
            }
        } else if let Err(e) =
            std::fs::create_dir_all(full.parent().unwrap()).and_then(|()| std::fs::write(&full, content))
        {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::FAILURE;
        } else {
            eprintln!("wrote {path}");
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// This package's directory: from cargo at run time (`cargo run`/`test`/`bench` set it), which
/// stays right when a build directory is shared between checkouts; else where it was built.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
