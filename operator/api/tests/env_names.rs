//! Every environment variable a worker or the operator reads is named in `contract.rs` and
//! nowhere else: a quoted variable name anywhere else in the Rust sources fails this test, and so
//! does a name the chart or the manifests set that the contract does not define.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
            files(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// Names in `text` that look like this project's variables (or the runtime's and S3's).
fn variable_names(text: &str, quote: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in [
        "AUTOTUNER_",
        "ORT_DYLIB_PATH",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        let needle = format!("{quote}{prefix}");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let name: String = rest[at + quote.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.push(name);
            rest = &rest[at + needle.len()..];
        }
    }
    names
}

fn contract() -> String {
    std::fs::read_to_string(root().join("operator/api/src/contract.rs")).unwrap()
}

#[test]
fn variable_names_live_in_the_contract_only() {
    let contract = contract();
    let allowed = autotuner_api::contract::DEVELOPMENT_VARIABLES;
    let mut sources = Vec::new();
    for dir in ["operator", "workers", "tests/src", "tests/tests"] {
        files(&root().join(dir), "rs", &mut sources);
    }
    assert!(sources.len() > 50, "{} sources", sources.len());
    let mut elsewhere = Vec::new();
    for file in &sources {
        if file.ends_with("operator/api/src/contract.rs") || file.ends_with("tests/env_names.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for name in variable_names(&text, "\"") {
            if !allowed.contains(&name.as_str()) {
                elsewhere.push(format!(
                    "{}: {name}",
                    file.strip_prefix(root()).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        elsewhere.is_empty(),
        "use the constants of autotuner_api::contract instead:\n{}",
        elsewhere.join("\n")
    );
    // The checker itself finds what it looks for.
    assert_eq!(
        variable_names(r#"env = "AUTOTUNER_X_1", "ORT_DYLIB_PATH""#, "\""),
        ["AUTOTUNER_X_1", "ORT_DYLIB_PATH"]
    );
    assert!(contract.contains("\"AUTOTUNER_TRAINING\""));
}

#[test]
fn the_chart_and_manifests_set_only_variables_the_contract_defines() {
    let contract = contract();
    let mut yaml = Vec::new();
    files(&root().join("charts"), "yaml", &mut yaml);
    files(&root().join("manifests"), "yaml", &mut yaml);
    let mut unknown = Vec::new();
    for file in &yaml {
        let text = std::fs::read_to_string(file).unwrap();
        for name in variable_names(&text, "name: ") {
            if !contract.contains(&format!("\"{name}\"")) {
                unknown.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}
