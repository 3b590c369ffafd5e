//! The CameraTuning API as a real kube-apiserver serves it: the generated CRD installs, the
//! examples are accepted, printer columns show, the server applies the reference defaults,
//! invalid specs are rejected with the CEL rule's message, and status is only written through
//! the status subresource.

use std::path::Path;

use autotuner_api::{CameraTuning, CameraTuningSpec, DriftSpec, MotionSpec, SamplingSpec, TrainableLayers};
use autotuner_tests::{
    ControlPlane, Options, expect_success, install_crd, repo_root, shared, test_namespace,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// A client, the CRD installed, and a fresh namespace on the shared API server.
async fn setup(prefix: &str) -> (&'static ControlPlane, Client, String) {
    let plane = shared(Options::default()).await;
    let client = plane.client().await.expect("client");
    install_crd(&client).await.expect("installing the CRD");
    let ns = test_namespace(&client, prefix).await.expect("namespace");
    (plane, client, ns)
}

fn example(name: &str) -> Value {
    let path = repo_root().join("manifests/examples").join(name);
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An untyped API, so that what is sent is exactly the JSON given (the typed one would send the
/// Rust defaults and hide the server's defaulting).
fn raw_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<CameraTuning>(&()))
}

async fn create_raw(client: &Client, ns: &str, object: &Value) -> kube::Result<DynamicObject> {
    let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    raw_api(client, ns).create(&PostParams::default(), &object).await
}

/// Sets `value` at a `/`-separated path inside `object`, creating objects on the way.
fn set(object: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts.pop().unwrap();
    let mut node = object;
    for part in parts {
        node = node
            .as_object_mut()
            .unwrap()
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut().unwrap().insert(last.to_string(), value);
}

fn remove(object: &mut Value, path: &str) {
    let (parent, last) = path.rsplit_once('/').unwrap();
    let node = parent.split('/').fold(object, |node, part| &mut node[part]);
    node.as_object_mut().unwrap().remove(last);
}

#[tokio::test]
async fn crd_is_served_namespaced_with_short_name_category_and_status_subresource() {
    let (plane, client, _ns) = setup("crd").await;
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get("cameratunings.autotuner.io")
        .await
        .unwrap();
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["camtune".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["autotuner".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );

    let resources = expect_success(
        plane
            .kubectl(["api-resources", "--api-group=autotuner.io", "--no-headers"])
            .unwrap(),
        "kubectl api-resources",
    )
    .unwrap();
    let fields: Vec<&str> = resources.split_whitespace().collect();
    assert_eq!(
        fields,
        [
            "cameratunings",
            "camtune",
            "autotuner.io/v1alpha1",
            "true",
            "CameraTuning"
        ]
    );
}

#[tokio::test]
async fn examples_are_accepted_and_kubectl_get_shows_the_printer_columns() {
    let (plane, client, ns) = setup("examples").await;
    let examples = repo_root().join("manifests/examples");
    // kubectl validates fields strictly: an unknown or misspelt field in an example fails here.
    expect_success(
        plane
            .kubectl(["apply", "-n", &ns, "-f", examples.to_str().unwrap()])
            .unwrap(),
        "kubectl apply of the examples",
    )
    .unwrap();

    let table = expect_success(
        plane.kubectl(["get", "camtune", "-n", &ns]).unwrap(),
        "kubectl get",
    )
    .unwrap();
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["NAME", "PHASE", "TRAIN", "TARGET", "MAP", "DRIFT", "AGE"],
        "{table}"
    );
    // No status yet: phase, train, mAP and drift are empty, the target comes from the spec (and
    // for the minimal example from the server's default).
    assert_eq!(lines[1][..2], ["entrance", "1000"], "{table}");
    assert_eq!(lines[2][..2], ["parking-lot-east", "2000"], "{table}");

    // A status as the workers and the operator will write it shows in the columns.
    let api: Api<CameraTuning> = Api::namespaced(client, &ns);
    let status = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": {
            "phase": "Monitoring",
            "dataset": { "framesSeen": 5000, "framesSelected": 1400, "annotated": 1200, "train": 1000, "eval": 200 },
            "currentModel": { "version": 1, "uri": "file:///models/entrance-1.onnx", "map": 0.43, "baselineMap": 0.28 },
            "lastDriftCheck": { "time": "2026-11-26T10:00:00Z", "relativeAccuracy": 0.91, "sampleSize": 50 },
            "iteration": 1
        }
    });
    api.patch_status(
        "entrance",
        &PatchParams::apply("autotuner-tests").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
    let table = expect_success(
        plane.kubectl(["get", "camtune", "entrance", "-n", &ns]).unwrap(),
        "kubectl get",
    )
    .unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..6],
        ["entrance", "Monitoring", "1000", "1000", "0.43", "0.91"],
        "{table}"
    );

    // The long name and the category list them too.
    for kind in ["cameratunings", "autotuner"] {
        let out = expect_success(
            plane.kubectl(["get", kind, "-n", &ns, "-o", "name"]).unwrap(),
            "kubectl get",
        )
        .unwrap();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "cameratuning.autotuner.io/entrance",
                "cameratuning.autotuner.io/parking-lot-east"
            ]
        );
    }
}

#[tokio::test]
async fn server_applies_the_reference_defaults() {
    let (_plane, client, ns) = setup("defaults").await;
    let created = create_raw(&client, &ns, &example("minimal.yaml")).await.unwrap();
    let spec = &created.data["spec"];
    // The reference method's values, as the API server stored them.
    assert_eq!(spec["motion"]["background"], "median");
    assert_eq!(spec["motion"]["blurKernel"], 21);
    assert_eq!(spec["motion"]["threshold"], 25);
    assert_eq!(spec["motion"]["dilateIterations"], 2);
    assert_eq!(spec["motion"]["minRegionArea"], 500);
    assert_eq!(spec["dataset"]["trainSize"], 1000);
    assert_eq!(spec["dataset"]["evalSize"], 200);
    assert_eq!(
        spec["dataset"]["storage"],
        json!({ "persistentVolumeClaim": { "size": "10Gi" } })
    );
    assert_eq!(spec["annotation"]["confidenceThreshold"], 0.5);
    assert_eq!(spec["annotation"]["cropToMotion"], true);
    assert_eq!(spec["annotation"]["teacher"]["gpus"], 1);
    assert_eq!(spec["training"]["trainableLayers"], "most");
    assert_eq!(spec["training"]["epochs"], 2);
    assert_eq!(spec["training"]["deadline"], "24h");

    // And the server's defaults are the Rust types' defaults, so code that builds a spec in Rust
    // and code that reads one from the cluster agree.
    let typed: CameraTuningSpec = serde_json::from_value(spec.clone()).unwrap();
    assert_eq!(typed.motion, MotionSpec::default());
    assert_eq!(typed.sampling, SamplingSpec::default());
    assert_eq!(typed.drift, DriftSpec::default());
    assert_eq!(typed.training.trainable_layers, TrainableLayers::Most);
    let stored = serde_json::to_value(&typed).unwrap();
    assert_eq!(&stored, spec, "the stored spec has fields the Rust types drop");
}

/// One invalid spec: what is changed from the minimal example, and what the rejection must say.
struct Invalid {
    what: &'static str,
    change: fn(&mut Value),
    message: &'static str,
}

fn invalid_specs() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "eval split not smaller than the train split",
            change: |o| set(o, "spec/dataset", json!({ "trainSize": 100, "evalSize": 100 })),
            message: "dataset.evalSize must be smaller than dataset.trainSize",
        },
        Invalid {
            what: "confidence threshold of 1",
            change: |o| set(o, "spec/annotation/confidenceThreshold", json!(1.0)),
            message: "annotation.confidenceThreshold must be strictly between 0 and 1",
        },
        Invalid {
            what: "confidence threshold of 0",
            change: |o| set(o, "spec/annotation/confidenceThreshold", json!(0)),
            message: "annotation.confidenceThreshold must be strictly between 0 and 1",
        },
        Invalid {
            what: "a URL scheme the capture worker cannot read",
            change: |o| set(o, "spec/camera/url", json!("ftp://camera.local/stream")),
            message: "camera.url must start with rtsp://, rtsps://, http://, https:// or file://",
        },
        Invalid {
            what: "credentials inlined in the URL",
            change: |o| {
                set(
                    o,
                    "spec/camera/url",
                    json!("rtsp://admin:hunter2@camera.local/stream"),
                )
            },
            message: "camera.url must not contain user:password@",
        },
        Invalid {
            what: "both node name and node selector",
            change: |o| {
                set(
                    o,
                    "spec/camera/nodeSelector",
                    json!({ "kubernetes.io/hostname": "edge-node-1" }),
                )
            },
            message: "set exactly one of camera.nodeName or camera.nodeSelector",
        },
        Invalid {
            what: "neither node name nor node selector",
            change: |o| remove(o, "spec/camera/nodeName"),
            message: "set exactly one of camera.nodeName or camera.nodeSelector",
        },
        Invalid {
            what: "a deadline that does not parse",
            change: |o| set(o, "spec/training/deadline", json!("tomorrow")),
            message: "training.deadline must be a duration of at least 1m",
        },
        Invalid {
            what: "a deadline too short to collect anything",
            change: |o| set(o, "spec/training/deadline", json!("30s")),
            message: "training.deadline must be a duration of at least 1m",
        },
        Invalid {
            what: "a background reset interval in words",
            change: |o| set(o, "spec/motion/backgroundResetInterval", json!("10 minutes")),
            message: "motion.backgroundResetInterval must be a duration",
        },
        Invalid {
            what: "an even blur kernel",
            change: |o| set(o, "spec/motion/blurKernel", json!(20)),
            message: "motion.blurKernel must be odd",
        },
        Invalid {
            what: "both a teacher and an endpoint",
            change: |o| {
                set(
                    o,
                    "spec/annotation/endpoint",
                    json!({ "url": "http://annotator.ml.svc:8080" }),
                )
            },
            message: "set exactly one of annotation.teacher",
        },
        Invalid {
            what: "an endpoint URL with credentials",
            change: |o| {
                remove(o, "spec/annotation/teacher");
                set(
                    o,
                    "spec/annotation/endpoint",
                    json!({ "url": "https://user:pw@annotator.example.com" }),
                );
            },
            message: "annotation.endpoint.url must be an http:// or https:// URL without credentials",
        },
        Invalid {
            what: "a CA for an endpoint served over plain HTTP",
            change: |o| {
                remove(o, "spec/annotation/teacher");
                set(
                    o,
                    "spec/annotation/endpoint",
                    json!({
                        "url": "http://annotator.ml.svc:8080",
                        "caSecretRef": { "name": "annotator-ca", "key": "ca.crt" }
                    }),
                );
            },
            message: "annotation.endpoint.caSecretRef is only used with an https:// url",
        },
        Invalid {
            what: "two kinds of dataset storage",
            change: |o| {
                set(
                    o,
                    "spec/dataset/storage",
                    json!({
                        "persistentVolumeClaim": { "size": "5Gi" },
                        "s3": { "bucket": "datasets", "credentialsSecretRef": { "name": "s3" } }
                    }),
                )
            },
            message: "set exactly one of dataset.storage.persistentVolumeClaim or dataset.storage.s3",
        },
        Invalid {
            what: "an existing claim and a size for a new one",
            change: |o| {
                set(
                    o,
                    "spec/dataset/storage",
                    json!({ "persistentVolumeClaim": { "claimName": "data", "size": "5Gi" } }),
                )
            },
            message: "set either claimName (an existing claim) or size",
        },
        Invalid {
            what: "a claim size that is not a quantity",
            change: |o| {
                set(
                    o,
                    "spec/dataset/storage",
                    json!({ "persistentVolumeClaim": { "size": "lots" } }),
                )
            },
            message: "dataset.storage.persistentVolumeClaim.size must be a positive quantity",
        },
        Invalid {
            what: "a deadline minimum above the train size",
            change: |o| set(o, "spec/training/minTrainSize", json!(5000)),
            message: "training.minTrainSize (images needed to train at the deadline) must not exceed dataset.trainSize",
        },
        Invalid {
            what: "a retraining cap below the train size",
            change: |o| set(o, "spec/drift/maxDatasetSize", json!(500)),
            message: "drift.maxDatasetSize caps the accumulated dataset and must be at least dataset.trainSize",
        },
        Invalid {
            what: "stream credentials for a file",
            change: |o| {
                set(o, "spec/camera/url", json!("file:///videos/vtest.avi"));
                set(o, "spec/camera/credentialsSecretRef", json!({ "name": "camera" }));
            },
            message: "camera.credentialsSecretRef is only used with network streams",
        },
        Invalid {
            what: "a learning rate of 0",
            change: |o| set(o, "spec/training/learningRate", json!(0)),
            message: "training.learningRate must be greater than 0 and at most 1",
        },
        Invalid {
            what: "a drift threshold above 1",
            change: |o| set(o, "spec/drift/minRelativeAccuracy", json!(1.5)),
            message: "drift.minRelativeAccuracy must be greater than 0 and at most 1",
        },
        Invalid {
            what: "a model URI scheme no worker can fetch",
            change: |o| set(o, "spec/training/student/uri", json!("gs://models/ssd.onnx")),
            message: "model uri must start with file://, http://, https:// or s3://",
        },
        Invalid {
            what: "a name too long to derive Job and Pod names from",
            change: |o| {
                set(
                    o,
                    "metadata/name",
                    json!("a-camera-name-that-is-far-too-long-for-its-jobs"),
                )
            },
            message: "metadata.name must be at most 40 characters",
        },
        Invalid {
            what: "a student the trainer cannot fine-tune",
            change: |o| set(o, "spec/training/student/family", json!("yolo")),
            message: "training.student.family must be ssdRaw",
        },
        // Bounds and enumerations in the schema; the messages are the API server's own.
        Invalid {
            what: "a binary threshold above 254",
            change: |o| set(o, "spec/motion/threshold", json!(300)),
            message: "spec.motion.threshold: Invalid value: 300: spec.motion.threshold in body should be less than or equal to 254",
        },
        Invalid {
            what: "no classes",
            change: |o| set(o, "spec/classes", json!([])),
            message: "spec.classes: Invalid value: 0: spec.classes in body should have at least 1 items",
        },
        Invalid {
            what: "the same class twice",
            change: |o| set(o, "spec/classes", json!(["person", "person"])),
            message: "spec.classes[1]: Duplicate value: \"person\"",
        },
        Invalid {
            what: "an unknown trainable-layers mode",
            change: |o| set(o, "spec/training/trainableLayers", json!("everything")),
            message: "spec.training.trainableLayers: Unsupported value: \"everything\"",
        },
        Invalid {
            what: "a mask point outside the frame",
            change: |o| {
                set(
                    o,
                    "spec/motion/masks",
                    json!([{ "points": [[0, 0], [1.5, 0], [0, 1]] }]),
                )
            },
            message: "should be less than or equal to 1",
        },
        Invalid {
            what: "an inference score threshold of 1",
            change: |o| set(o, "spec/inference/minScore", json!(1.0)),
            message: "inference.minScore must be strictly between 0 and 1",
        },
        Invalid {
            what: "no inference rate",
            change: |o| set(o, "spec/inference/maxFramesPerSecond", json!(0.05)),
            message: "should be greater than or equal to 0.1",
        },
        Invalid {
            what: "an MQTT broker URL with credentials",
            change: |o| {
                set(
                    o,
                    "spec/inference/mqtt",
                    json!({ "url": "mqtt://user:pw@broker:1883" }),
                )
            },
            message: "inference.mqtt.url must be mqtt://host or mqtt://host:port, without credentials",
        },
        Invalid {
            what: "an MQTT topic prefix with a wildcard",
            change: |o| {
                set(
                    o,
                    "spec/inference/mqtt",
                    json!({ "url": "mqtt://broker", "topicPrefix": "cams/#" }),
                )
            },
            message: "inference.mqtt.topicPrefix must not contain the MQTT wildcards",
        },
        Invalid {
            what: "an MQTT quality of service of 2",
            change: |o| {
                set(
                    o,
                    "spec/inference/mqtt",
                    json!({ "url": "mqtt://broker", "qos": 2 }),
                )
            },
            message: "should be less than or equal to 1",
        },
    ]
}

#[tokio::test]
async fn invalid_specs_are_rejected_with_a_message_that_says_what_to_fix() {
    let (_plane, client, ns) = setup("invalid").await;
    // The unchanged example is accepted, so every rejection below is the change's doing.
    let mut valid = example("minimal.yaml");
    set(&mut valid, "metadata/name", json!("valid"));
    create_raw(&client, &ns, &valid)
        .await
        .expect("the minimal example is valid");

    let mut failures = Vec::new();
    for (i, case) in invalid_specs().into_iter().enumerate() {
        let mut object = example("minimal.yaml");
        set(&mut object, "metadata/name", json!(format!("invalid-{i}")));
        (case.change)(&mut object);
        match create_raw(&client, &ns, &object).await {
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(case.message) => {}
            Err(kube::Error::Api(status)) => failures.push(format!(
                "{}: rejected with {} but without {:?}:\n  {}",
                case.what, status.code, case.message, status.message
            )),
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the invalid specs were not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn kubectl_apply_shows_the_rule_message_and_updates_are_validated_too() {
    let (plane, client, ns) = setup("kubectl").await;
    let mut object = example("minimal.yaml");
    set(
        &mut object,
        "spec/dataset",
        json!({ "trainSize": 50, "evalSize": 80 }),
    );
    let output = plane
        .kubectl_stdin(["apply", "-n", &ns, "-f", "-"], &object.to_string())
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.dataset.evalSize: Invalid value")
            && stderr.contains("dataset.evalSize must be smaller than dataset.trainSize"),
        "{stderr}"
    );

    // A valid object cannot be edited into an invalid one either.
    create_raw(&client, &ns, &example("minimal.yaml")).await.unwrap();
    let patch = json!({ "spec": { "dataset": { "evalSize": 5000 } } });
    let err = raw_api(&client, &ns)
        .patch("entrance", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("dataset.evalSize must be smaller")),
        "{err}"
    );
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let (_plane, client, ns) = setup("status").await;
    let created = create_raw(&client, &ns, &example("minimal.yaml")).await.unwrap();
    let generation = created.metadata.generation;
    let api: Api<CameraTuning> = Api::namespaced(client.clone(), &ns);

    // Through the main resource, a status is dropped.
    let mut with_status: CameraTuning = api.get("entrance").await.unwrap();
    with_status.status =
        Some(serde_json::from_value(json!({ "phase": "Deployed", "iteration": 3 })).unwrap());
    let replaced = api
        .replace("entrance", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(replaced.status, None);
    let merge = json!({ "status": { "phase": "Failed" } });
    let patched = api
        .patch("entrance", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    assert_eq!(patched.status, None);

    // Through /status it is stored, and the spec generation does not move.
    let status = json!({ "status": { "phase": "Capturing", "dataset": { "framesSeen": 100, "train": 12 } } });
    let patched = api
        .patch_status("entrance", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let stored = patched.status.unwrap();
    assert_eq!(stored.phase, Some(autotuner_api::Phase::Capturing));
    assert_eq!(stored.dataset.unwrap().train, Some(12));
    assert_eq!(patched.metadata.generation, generation);

    // ... and /status does not change the spec.
    let spec_change = json!({ "spec": { "classes": ["car"] }, "status": { "iteration": 1 } });
    let patched = api
        .patch_status("entrance", &PatchParams::default(), &Patch::Merge(&spec_change))
        .await
        .unwrap();
    assert_eq!(patched.spec.classes, ["person"]);
    assert_eq!(patched.status.unwrap().iteration, Some(1));

    // The status schema is enforced as well.
    let bad = json!({ "status": { "phase": "Exploded" } });
    let err = api
        .patch_status("entrance", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("Unsupported value: \"Exploded\"")),
        "{err}"
    );

    // Two writers own different parts of the status by server-side apply (the capture worker its
    // dataset counts, the operator the phase and conditions) without overwriting each other.
    let capture = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": { "dataset": { "framesSeen": 900, "framesSelected": 300, "annotated": 250, "train": 200, "eval": 50 } }
    });
    let operator = json!({
        "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": { "phase": "Capturing", "conditions": [{
            "type": "Progressing", "status": "True", "reason": "Capturing",
            "message": "200 of 1000 training images", "lastTransitionTime": "2026-11-26T10:00:00Z"
        }] }
    });
    api.patch_status(
        "entrance",
        &PatchParams::apply("capture").force(),
        &Patch::Apply(&capture),
    )
    .await
    .unwrap();
    api.patch_status(
        "entrance",
        &PatchParams::apply("operator").force(),
        &Patch::Apply(&operator),
    )
    .await
    .unwrap();
    let status = api.get_status("entrance").await.unwrap().status.unwrap();
    assert_eq!(status.dataset.unwrap().train, Some(200));
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.phase, Some(autotuner_api::Phase::Capturing));
}

#[tokio::test]
async fn manifests_and_crds_pass_a_server_side_dry_run() {
    let (plane, _client, ns) = setup("dryrun").await;
    let mut files = Vec::new();
    collect_yaml(&repo_root().join("manifests/examples"), &mut files);
    collect_yaml(&repo_root().join("crds"), &mut files);
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let args = [
            "apply",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            file.to_str().unwrap(),
        ];
        expect_success(
            plane.kubectl(args).unwrap(),
            &format!("server-side dry run of {}", file.display()),
        )
        .unwrap();
    }
    // The operator's install, as GitOps tools apply it. A dry run creates nothing, so the
    // namespace its objects go to must exist already.
    let _ = plane.kubectl(["create", "namespace", "autotuner-system"]);
    let kustomization = repo_root().join("manifests/operator");
    let args = ["apply", "--dry-run=server", "-k", kustomization.to_str().unwrap()];
    let applied = expect_success(
        plane.kubectl(args).unwrap(),
        "server-side dry run of manifests/operator",
    )
    .unwrap();
    for object in [
        "customresourcedefinition",
        "clusterrole",
        "deployment.apps/autotuner-operator",
    ] {
        assert!(applied.contains(object), "{object} missing from\n{applied}");
    }
}

fn collect_yaml(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, files);
        } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            // Checked through `kubectl apply -k` below.
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
}
