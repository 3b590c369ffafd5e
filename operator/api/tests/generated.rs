//! The checked-in artifacts agree with the Rust types.

use autotuner_api::CameraTuning;

fn repo_file(path: &str) -> String {
    let path = manifest_dir().join("../..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn checked_in_crd_is_what_the_types_generate() {
    assert!(
        repo_file(autotuner_api::CRD_PATH) == autotuner_api::crd_yaml(),
        "{} is out of date: run `cargo run -p autotuner-api --bin crdgen` and commit the result",
        autotuner_api::CRD_PATH
    );
}

/// Parsing and re-serialising the full example must give back exactly what it says: a field the
/// types do not know (a typo, a renamed field) would vanish and fail the comparison.
#[test]
fn full_example_round_trips_through_the_types() {
    let original: serde_json::Value =
        serde_yaml_ng::from_str(&repo_file("manifests/examples/full.yaml")).unwrap();
    let parsed: CameraTuning = serde_json::from_value(original.clone()).unwrap();
    let round_trip = serde_json::to_value(&parsed).unwrap();
    assert_eq!(round_trip["spec"], original["spec"]);
}

#[test]
fn minimal_example_parses_and_gets_the_reference_defaults() {
    let tuning: CameraTuning =
        serde_yaml_ng::from_str(&repo_file("manifests/examples/minimal.yaml")).unwrap();
    let spec = &tuning.spec;
    assert_eq!(spec.motion.background, autotuner_api::BackgroundModel::Median);
    assert_eq!(
        (
            spec.motion.blur_kernel,
            spec.motion.threshold,
            spec.motion.dilate_iterations,
            spec.motion.min_region_area
        ),
        (21, 25, 2, 500)
    );
    assert_eq!((spec.dataset.train_size, spec.dataset.eval_size), (1000, 200));
    assert_eq!(spec.annotation.confidence_threshold, 0.5);
    assert_eq!(
        spec.training.trainable_layers,
        autotuner_api::TrainableLayers::Most
    );
}

/// This package's directory: from cargo at run time (`cargo run`/`test`/`bench` set it), which
/// stays right when a build directory is shared between checkouts; else where it was built.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
