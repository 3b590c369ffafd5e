//! Writes the CameraTuning CRD to `crds/cameratuning.yaml` (or stdout with `-`), or with
//! `--check` fails when the checked-in file differs from what the Rust types generate.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = manifest_dir().join("../..");
    let path = root.join(autotuner_api::CRD_PATH);
    let yaml = autotuner_api::crd_yaml();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => match std::fs::write(&path, &yaml) {
            Ok(()) => {
                eprintln!("wrote {}", autotuner_api::CRD_PATH);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        ["-"] => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        ["--check"] => match std::fs::read_to_string(&path) {
            Ok(current) if current == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "{} is out of date with the Rust types; run `cargo run -p autotuner-api --bin crdgen` and commit it",
                    autotuner_api::CRD_PATH
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: crdgen [- | --check]");
            ExitCode::from(2)
        }
    }
}

/// This package's directory: from cargo at run time (`cargo run`/`test`/`bench` set it), which
/// stays right when a build directory is shared between checkouts; else where it was built.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
