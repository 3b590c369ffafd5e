//! The chart's alert rules (`charts/edge-autotuner/rules`), with Debian's promtool: valid, every
//! alert pinned by a unit test, and every series they and the dashboards
//! (`charts/edge-autotuner/dashboards`) read one that a component exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use autotuner_tests::prometheus::{alert_queries, dashboard_queries, metrics_read};
use autotuner_tests::{prometheus_binaries, repo_root};
use serde_yaml_ng::Value;

fn rules_dir() -> PathBuf {
    repo_root().join("charts/edge-autotuner/rules")
}

/// `promtool <args>` in `dir`: its exit status and what it printed.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let promtool = prometheus_binaries().unwrap().join("promtool");
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn rules() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(rules_dir().join("alerts.yaml")).unwrap()).unwrap()
}

fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_sequence().unwrap())
        .collect()
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let (valid, printed) = promtool(&rules_dir(), &["check", "rules", "alerts.yaml"]);
    assert!(valid, "promtool check rules:\n{printed}");
    let (passed, printed) = promtool(&rules_dir(), &["test", "rules", "alerts.test.yaml"]);
    assert!(passed, "promtool test rules:\n{printed}");
}

/// Each alert in turn is taken out of the rules: the unit tests must then fail, naming it, so no
/// alert goes untested (an expected alert that never fires fails promtool's test).
#[test]
fn every_alert_has_a_unit_test_that_fails_without_it() {
    let rules = rules();
    let names: Vec<String> = alerts(&rules)
        .iter()
        .map(|rule| rule["alert"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    let tests = std::fs::read_to_string(rules_dir().join("alerts.test.yaml")).unwrap();
    for name in &names {
        let mut without = rules.clone();
        for group in without["groups"].as_sequence_mut().unwrap() {
            group["rules"]
                .as_sequence_mut()
                .unwrap()
                .retain(|rule| rule["alert"].as_str() != Some(name));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alerts.yaml"),
            serde_yaml_ng::to_string(&without).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("alerts.test.yaml"), &tests).unwrap();
        let (passed, printed) = promtool(dir.path(), &["test", "rules", "alerts.test.yaml"]);
        assert!(
            !passed && printed.contains(&format!("alertname: {name}")),
            "the unit tests pass without {name}:\n{printed}"
        );
    }
}

/// Fails naming each metric `what` reads that no component registers.
fn assert_exported(what: &str, read: &[String]) {
    let sources: String = [
        "operator/controller/src/metrics.rs",
        "workers/annotator/src/metrics.rs",
        "workers/capture/src/metrics.rs",
    ]
    .iter()
    .map(|path| std::fs::read_to_string(repo_root().join(path)).unwrap())
    .collect();
    let missing: Vec<&String> = read
        .iter()
        .filter(|name| !sources.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{what} read {missing:?}, which no component exports"
    );
}

/// A rule on a misspelt or removed metric would never fire: every `autotuner_*` name an
/// expression reads is registered by the operator, the annotator or the capture worker.
#[test]
fn every_series_the_alerts_read_is_exported() {
    let read: Vec<String> = alert_queries()
        .iter()
        .flat_map(|q| metrics_read(&q.expr))
        .collect();
    assert!(read.len() >= 9, "{read:?}");
    assert_exported("the alert rules", &read);
}

/// A panel on a metric that does not exist stays empty forever: every name a dashboard query
/// reads is exported, and each dashboard reads the metrics of every component it shows.
#[test]
fn every_series_the_dashboards_read_is_exported() {
    let queries = dashboard_queries();
    let of = |file: &str| -> Vec<String> {
        queries
            .iter()
            .filter(|q| q.file == file)
            .flat_map(|q| metrics_read(&q.expr))
            .collect()
    };
    let (fleet, camera) = (of("fleet.json"), of("camera.json"));
    assert_exported("the fleet dashboard", &fleet);
    assert_exported("the camera dashboard", &camera);
    for (dashboard, read, prefixes) in [
        (
            "fleet",
            &fleet,
            &[
                "autotuner_cameratuning",
                "autotuner_annotator_",
                "autotuner_operator_",
            ][..],
        ),
        (
            "camera",
            &camera,
            &[
                "autotuner_cameratuning_",
                "autotuner_capture_",
                "autotuner_edge_",
                "autotuner_drift_",
            ][..],
        ),
    ] {
        for prefix in prefixes {
            assert!(
                read.iter().any(|name| name.starts_with(prefix)),
                "the {dashboard} dashboard shows nothing of {prefix}*"
            );
        }
    }
    // A camera panel selects its CameraTuning's series, or those of its namespace's annotators
    // (shared by the CameraTunings there with the same teacher).
    for query in queries.iter().filter(|q| q.file == "camera.json" && q.panel) {
        let annotators = metrics_read(&query.expr)
            .iter()
            .all(|m| m.starts_with("autotuner_annotator_"));
        let selector = if annotators {
            "namespace=\"$namespace\", component=\"annotator\""
        } else {
            "namespace=\"$namespace\", cameratuning=\"$cameratuning\""
        };
        assert!(
            query.expr.contains(selector),
            "a camera panel shows more than its camera: {}",
            query.expr
        );
    }
}
