//! Every field of the CameraTuning spec takes effect: the test walks every leaf of the CRD's
//! schema, changes it in an otherwise fixed resource, and looks for the change in what each
//! consumer derives from the spec:
//! - the operator: the objects it builds (every pod's environment and template, the Job's
//!   settings) and its plan in a few situations where thresholds matter;
//! - the capture worker: its pipeline settings, edge settings, drift settings and MQTT settings;
//! - the trainer: the settings the operator renders into the Job (`TrainingSettings`), which the
//!   trainer's own test shows become its training configuration.
//!
//! A field no consumer reacts to fails the test, and a new field without a rule to change it
//! fails it too, so the API cannot promise what nothing does.

use std::collections::BTreeMap;

use autotuner_api::CameraTuning;
use autotuner_capture::CaptureConfig;
use autotuner_capture::cluster::{self, ClusterContext};
use autotuner_capture::edge::EdgeSettings;
use autotuner_operator::Config;
use autotuner_operator::children::{self, Rollout};
use autotuner_operator::plan::{self, Observed};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

fn full() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../manifests/examples/full.yaml"
    ))
    .unwrap();
    let mut tuning: Value = serde_yaml_ng::from_str(&text).unwrap();
    tuning["metadata"]["namespace"] = json!("depot-3");
    tuning["metadata"]["uid"] = json!("u-1");
    tuning["metadata"]["generation"] = json!(1);
    tuning
}

/// The full example, and variants holding the alternatives it cannot hold at once (exactly one
/// of nodeName and nodeSelector, of teacher and endpoint, of s3 and a claim; a claim by name or
/// by size).
fn bases() -> Vec<Value> {
    let mut by_name = full();
    let spec = &mut by_name["spec"];
    spec["camera"].as_object_mut().unwrap().remove("nodeSelector");
    spec["camera"]["nodeName"] = json!("edge-node-7");
    spec["annotation"].as_object_mut().unwrap().remove("teacher");
    spec["annotation"]["endpoint"] = json!({
        "url": "https://annotator.gpu.svc:8080",
        "tokenSecretRef": { "name": "annotator-token", "key": "token" },
        "caSecretRef": { "name": "annotator-ca", "key": "ca.crt" },
    });
    spec["dataset"]["storage"] =
        json!({ "persistentVolumeClaim": { "size": "20Gi", "storageClassName": "fast" } });
    let mut claimed = full();
    claimed["spec"]["dataset"]["storage"] =
        json!({ "persistentVolumeClaim": { "claimName": "shared-data" } });
    vec![full(), by_name, claimed]
}

/// The leaves of the spec's schema, as JSON paths under `spec`; objects the API embeds whole
/// (resources, maps, lists) are leaves.
fn leaves(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match schema.get("properties").and_then(Value::as_object) {
        Some(properties) => {
            for (name, child) in properties {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if child_path.ends_with("resources") {
                    out.push((child_path, child.clone()));
                } else {
                    leaves(child, &child_path, out);
                }
            }
        }
        None => out.push((path.to_string(), schema.clone())),
    }
}

fn spec_schema() -> Value {
    let crd: Value = serde_yaml_ng::from_str(&autotuner_api::crd_yaml()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn get_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(value, |v, key| v.get_mut(key))
}

/// Another valid value for the field at `path` (its schema says what is valid).
fn changed(path: &str, value: &Value, schema: &Value) -> Option<Value> {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    Some(match value {
        Value::Bool(b) => json!(!b),
        Value::Number(n) if schema["type"] == "integer" => {
            let v = n.as_i64()?;
            if bound("maximum").is_none_or(|max| (v + 1) as f64 <= max) {
                json!(v + 1)
            } else {
                json!(v - 1)
            }
        }
        Value::Number(n) => {
            let v = n.as_f64()?;
            let up = v * 1.5;
            if bound("maximum").is_none_or(|max| up <= max) && up < 1.0 || path.ends_with("FramesPerSecond") {
                json!(up)
            } else {
                json!(v * 0.5)
            }
        }
        Value::String(s) => {
            if let Some(options) = schema["enum"].as_array() {
                options.iter().find(|o| o.as_str() != Some(s)).cloned()?
            } else if autotuner_api::duration::parse(s).is_some() && s.len() < 8 {
                json!(format!("{s}{s}"))
            } else if s.contains("://") {
                json!(format!("{s}-b"))
            } else if path.ends_with("size") {
                json!("30Gi")
            } else {
                json!(format!("{s}-b"))
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let mut items = items.clone();
            if path == "masks" || path.ends_with(".masks") {
                items.push(json!({ "points": [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9]] }));
            } else {
                items.pop();
            }
            json!(items)
        }
        Value::Object(map) if path.ends_with("resources") => {
            let mut map = map.clone();
            map.insert("limits".into(), json!({ "memory": "3Gi" }));
            json!(map)
        }
        Value::Object(map) => {
            let mut map = map.clone();
            map.insert("autotuner.io/zone".into(), json!("b"));
            json!(map)
        }
        _ => return None,
    })
}

const NOW: &str = "2026-11-29T12:00:00Z";

/// Status situations where the plan's thresholds decide, placed on both sides of the spec's
/// values so that a change of a threshold in either direction changes a decision.
fn situations(spec: &Value) -> Vec<(Value, Observed)> {
    let n = |path: &str| get(spec, path).and_then(Value::as_f64).unwrap_or(0.0);
    let mut out = vec![json!(null)];
    let mut trained = Vec::new();
    let (min_train, train_size) = (n("training.minTrainSize"), n("dataset.trainSize"));
    let (min_eval, eval_size) = (n("training.minEvalSize"), n("dataset.evalSize"));
    let collected = |train: f64, eval: f64, deadline: &str| {
        json!({ "phase": "Capturing", "iteration": 0,
            "dataset": { "train": train.max(0.0) as u64, "eval": eval.max(0.0) as u64, "deadline": deadline } })
    };
    for train in [min_train, min_train - 1.0, train_size, train_size - 1.0] {
        out.push(collected(train, eval_size, "2026-11-29T11:00:00Z"));
    }
    for eval in [min_eval, min_eval - 1.0] {
        out.push(collected(train_size, eval, "2026-11-29T11:00:00Z"));
    }
    for eval in [eval_size, eval_size - 1.0] {
        out.push(collected(train_size, eval, "2026-11-30T11:00:00Z"));
    }
    let model = |v: u32, map: f64| {
        json!({ "version": v, "uri": format!("s3://m/{v}.onnx"), "map": map, "map50": 0.8,
        "trainedAt": "2026-11-29T08:00:00Z" })
    };
    let serving =
        json!({ "model": { "version": 2, "uri": "s3://m/2.onnx", "since": "2026-11-29T09:00:00Z" } });
    for delta in [-0.001, 0.001] {
        let margin = n("rollout.minImprovement");
        trained.push(json!({ "phase": "Retraining", "iteration": 2, "currentModel": model(2, 0.4),
            "candidateModel": { "version": 3, "uri": "s3://m/3.onnx", "map": 0.3 + margin + delta, "baselineMap": 0.3 } }));
        let threshold = n("drift.minRelativeAccuracy");
        out.push(json!({ "phase": "Monitoring", "iteration": 2, "currentModel": model(2, 0.4), "inference": serving,
            "lastDriftCheck": { "time": "2026-11-29T11:00:00Z", "relativeAccuracy": threshold + delta, "modelVersion": 2 } }));
        let rollback = n("rollout.rollbackMargin");
        out.push(json!({ "phase": "Monitoring", "iteration": 2, "currentModel": model(2, 0.4), "inference": serving,
            "previousModel": model(1, 0.35),
            "lastDriftCheck": { "time": "2026-11-29T11:00:00Z", "relativeAccuracy": 0.9, "modelVersion": 2,
                "ap50": 0.7, "previousModelAp50": 0.7 + rollback + delta } }));
    }
    // The candidate's Job (iteration 3) has succeeded.
    let succeeded = Observed {
        jobs: BTreeMap::from([(3, plan::JobState::Succeeded)]),
        ..Observed::default()
    };
    out.into_iter()
        .map(|status| (status, Observed::default()))
        .chain(trained.into_iter().map(|status| (status, succeeded.clone())))
        .collect()
}

/// What the operator makes of the resource: its objects (with a training Job) and its plans.
fn operator_view(tuning: &Value) -> String {
    let parsed: CameraTuning = serde_json::from_value(tuning.clone()).unwrap();
    let config = Config::default();
    let mut built = children::build(
        &parsed,
        &Rollout {
            deployed_model_uri: "s3://m/2.onnx",
            train_iteration: Some(3),
            round_started_at: None,
        },
        &config,
    );
    // The hash of the capture worker's settings rolls its pod; it is not a use of the field.
    if let Some(metadata) = built.capture.spec.template.metadata.as_mut() {
        metadata.annotations = None;
    }
    let mut view = format!("{built:?}");
    let now: Timestamp = NOW.parse().unwrap();
    for (status, observed) in situations(&tuning["spec"]) {
        let mut t = tuning.clone();
        t["status"] = status;
        let parsed: CameraTuning = serde_json::from_value(t).unwrap();
        let planned = plan::plan(&parsed, &observed, now, &config).unwrap();
        let mut status = serde_json::to_value(&planned.status).unwrap();
        // Transition times differ by nothing but the clock; the decisions are what matters.
        status.as_object_mut().unwrap().remove("conditions");
        view.push_str(&status.to_string());
        view.push_str(&format!("{:?}", planned.notes));
        view.push_str(&serde_json::to_string(&planned.children.training_job).unwrap());
    }
    view
}

/// What the capture worker makes of the spec.
fn capture_view(tuning: &Value) -> String {
    let parsed: CameraTuning = serde_json::from_value(tuning.clone()).unwrap();
    let spec = &parsed.spec;
    let mut config = CaptureConfig::new("/v.avi", "/data".into());
    let mut min_score = 0.0;
    cluster::apply_spec(spec, &mut config, &mut min_score);
    let context = ClusterContext {
        name: "parking-lot-east".into(),
        namespace: "depot-3".into(),
    };
    format!(
        "{:?} {:?} {min_score} {:?} {:?} {:?} {:?}",
        (
            &config.source.url,
            &config.classes,
            &config.motion,
            &config.sampling
        ),
        (
            &config.dataset,
            config.crop_to_motion,
            config.background_reset_after
        ),
        cluster::edge_settings(spec, &EdgeSettings::default()),
        cluster::drift_settings(spec),
        cluster::mqtt_config(spec, &context).map(|m| (m.url, m.topic_prefix, m.qos)),
        cluster::served_family(spec),
    )
}

#[test]
fn every_spec_field_changes_what_a_consumer_does() {
    let schema = spec_schema();
    let mut fields = Vec::new();
    leaves(&schema, "", &mut fields);
    assert!(fields.len() > 60, "{} fields", fields.len());
    let bases = bases();
    let mut consumers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut unconsumed = Vec::new();
    for (path, field_schema) in &fields {
        let Some(base) = bases.iter().find(|b| get(&b["spec"], path).is_some()) else {
            unconsumed.push(format!(
                "{path}: no example sets it (add it to full.yaml or a variant here)"
            ));
            continue;
        };
        let value = get(&base["spec"], path).unwrap();
        let Some(new_value) = changed(path, value, field_schema) else {
            unconsumed.push(format!("{path}: no rule to change {value}"));
            continue;
        };
        let mut edited = base.clone();
        *get_mut(&mut edited["spec"], path).unwrap() = new_value.clone();
        let edited_spec: Result<CameraTuning, _> = serde_json::from_value(edited.clone());
        assert!(edited_spec.is_ok(), "{path} = {new_value}: {edited_spec:?}");
        let mut by = Vec::new();
        if operator_view(base) != operator_view(&edited) {
            by.push("operator");
        }
        if capture_view(base) != capture_view(&edited) {
            by.push("capture");
        }
        if path.starts_with("training.")
            && !path.starts_with("training.student")
            && !path.ends_with("resources")
        {
            // What the Job carries for the trainer (`TrainingSettings`).
            let settings = |t: &Value| {
                let parsed: CameraTuning = serde_json::from_value(t.clone()).unwrap();
                autotuner_api::contract::TrainingSettings::new(&parsed.spec, 3, "s3://m/2.onnx", None)
            };
            if settings(base) != settings(&edited) {
                by.push("trainer");
            }
        }
        if by.is_empty() {
            unconsumed.push(format!("{path}: {value} -> {new_value} changes nothing"));
        }
        consumers.insert(path.clone(), by);
    }
    for (path, by) in &consumers {
        eprintln!("{path:45} {}", by.join(", "));
    }
    assert!(
        unconsumed.is_empty(),
        "fields nothing consumes:\n{}",
        unconsumed.join("\n")
    );
    // Spot checks that the walk sees what it should.
    assert_eq!(consumers["training.epochs"], ["operator", "trainer"]);
    assert_eq!(consumers["drift.sampleSize"], ["capture"]);
    assert!(consumers["motion.backgroundResetInterval"].contains(&"capture"));
    assert!(consumers["annotation.cropToMotion"].contains(&"capture"));
    assert!(consumers["drift.minRelativeAccuracy"].contains(&"operator"));
}
