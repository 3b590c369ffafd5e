//! The annotator binary's log format: JSON lines with `contract::ENV_LOG_JSON` (as the operator's
//! and the other workers'), text without.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The annotator's first log line that mentions `needle`, started on the teacher with `log_json`.
fn first_line_with(log_json: bool, needle: &str) -> String {
    let assets = autotuner_detect::assets::dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_autotuner-annotator"))
        .args(["--listen", "127.0.0.1:0", "--device", "cpu", "--model"])
        .arg(assets.join("models/yolov12n.onnx"))
        .arg("--onnxruntime")
        .arg(assets.join("libonnxruntime.so"))
        .env(autotuner_api::contract::ENV_LOG_JSON, log_json.to_string())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the annotator");
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains(needle));
    let _ = child.kill();
    let _ = child.wait();
    line.unwrap_or_else(|| panic!("no log line with {needle:?}"))
}

#[test]
fn the_annotator_logs_json_lines_when_the_contract_says_so_and_text_otherwise() {
    let json: serde_json::Value =
        serde_json::from_str(&first_line_with(true, "model loaded")).expect("a JSON line");
    assert_eq!(json["level"], "INFO", "{json}");
    assert_eq!(json["fields"]["message"], "model loaded", "{json}");
    assert_eq!(json["fields"]["device"], "cpu", "{json}");
    let text = first_line_with(false, "model loaded");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "{text}"
    );
    assert!(text.contains("INFO") && text.contains("device=cpu"), "{text}");
}
