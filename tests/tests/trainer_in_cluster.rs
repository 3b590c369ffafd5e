//! The trainer as the operator runs it: configured only by the Job's environment, on the dataset
//! volume's layout, authenticated as the CameraTuning's worker ServiceAccount with the Role the
//! operator gives it (built by the operator's own code), against the real test API server. It
//! publishes the model where the contract says and reports `status.candidateModel` under its
//! own field manager; it cannot write another CameraTuning's status.
//! (The trainer's test, kept in the harness's crate: see [`trainer`].)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use autotuner_api::contract::{self, TRAINER_FIELD_MANAGER, TrainingSettings};
use autotuner_api::{CameraTuning, Phase, TrainableLayers};
use autotuner_tests::operator;
use autotuner_tests::workers::{
    FileServer, JobPod, S3Server, container_env, job_pod_command, tuning_with_worker_identity,
    worker_kubeconfig,
};
use autotuner_tests::{Options, install_crd, shared, test_namespace, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

/// The trainer binary `cargo test --workspace` builds beside this test (here, in the harness's
/// crate, the test compiles without the trainer's optimisation profile: kube's generics at
/// opt-level 3 made it the slowest target of the build).
fn trainer() -> PathBuf {
    autotuner_tests::workers::workspace_binary("trainer")
}

fn assets() -> PathBuf {
    let dir = autotuner_detect::assets::dir();
    assert!(
        dir.join("vtest-frames/000795.png").is_file(),
        "run scripts/fetch-assets (scripts/test does)"
    );
    dir
}

/// A split of the dataset volume: frames with PETS09's people, as the capture worker writes it.
fn split(dataset: &Path, file: &str, frames: &[usize]) {
    let path = dataset.join(file);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let gt = std::fs::read_to_string(assets().join("data/PETS09-S2L1/gt/gt.txt")).unwrap();
    let mut annotations = Vec::new();
    for line in gt.lines() {
        let f: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
        if frames.contains(&(f[0] as usize)) && f[6] == 1.0 {
            annotations.push(
                json!({"id": annotations.len() + 1, "image_id": f[0] as u64, "category_id": 1,
                                    "bbox": [f[2].max(0.0), f[3].max(0.0), f[4], f[5]]}),
            );
        }
    }
    let images: Vec<Value> = frames
        .iter()
        .map(|f| {
            let name = format!("images/{f:06}.png");
            std::fs::copy(assets().join(format!("vtest-frames/{f:06}.png")), dir.join(&name)).unwrap();
            json!({"id": f, "file_name": name, "width": 768, "height": 576})
        })
        .collect();
    let body =
        json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]});
    std::fs::write(path, body.to_string()).unwrap();
}

/// What the operator would ask of iteration 3: start from `student`, keep the 4 latest images.
fn settings(student: &str) -> TrainingSettings {
    TrainingSettings {
        iteration: 3,
        base_model_uri: student.to_string(),
        dataset_cap: 4,
        epochs: 1,
        batch_size: 4,
        learning_rate: 1e-4,
        trainable_layers: TrainableLayers::BoxRegression,
        round_started_at: None,
    }
}

fn local_student() -> String {
    format!(
        "file://{}",
        assets().join("models/ssd_mobilenet_v2_coco_raw.onnx").display()
    )
}

fn run_trainer(
    kubeconfig: &Path,
    ns: &str,
    name: &str,
    dataset: &Path,
    settings: &TrainingSettings,
) -> (bool, String) {
    run_trainer_with(kubeconfig, ns, name, dataset.to_str().unwrap(), settings, &[])
}

fn run_trainer_with(
    kubeconfig: &Path,
    ns: &str,
    name: &str,
    dataset_uri: &str,
    settings: &TrainingSettings,
    env: &[(&str, String)],
) -> (bool, String) {
    // Epochs, batch size and the rest come from the settings, as in a Job.
    let out = Command::new(trainer())
        .args(["--max-steps", "1", "--views", "1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("AUTOTUNER_ASSETS", assets())
        .env("KUBECONFIG", kubeconfig)
        .env(contract::ENV_NAME, name)
        .env(contract::ENV_NAMESPACE, ns)
        .env(contract::ENV_DATASET_URI, dataset_uri)
        .env(contract::ENV_TRAINING, settings.to_env_value())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir`, as paths relative to it.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(
                files_below(&path)
                    .into_iter()
                    .map(|p| Path::new(&entry.file_name()).join(p)),
            );
        } else {
            out.push(PathBuf::from(entry.file_name()));
        }
    }
    out
}

#[tokio::test]
async fn the_job_reports_its_candidate_model_as_the_worker_identity() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "trainer").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let (tuning, account) = tuning_with_worker_identity(&admin, &ns, "lobby", Some(3), |_| {}).await;
    let mut other: CameraTuning = tuning.clone();
    other.metadata = kube::api::ObjectMeta {
        name: Some("other".into()),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    tunings.create(&PostParams::default(), &other).await.unwrap();

    let dir = std::env::temp_dir().join(format!("autotuner-trainer-cluster-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dataset = dir.join("data");
    split(
        &dataset,
        contract::DATASET_TRAIN_FILE,
        &[20, 60, 100, 140, 180, 220],
    );
    split(&dataset, contract::DATASET_EVAL_FILE, &[450, 500]);
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, &dir).await;

    // The student comes over HTTP (as in manifests/examples/minimal.yaml).
    let models = FileServer::start(&assets().join("models"));
    let over_http = settings(&models.url("ssd_mobilenet_v2_coco_raw.onnx"));
    let (ok, err) = run_trainer(&kubeconfig, &ns, &tuning.name_any(), &dataset, &over_http);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(dataset.join(contract::training_run_dir(3)).join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["train"]["images"], 4,
        "the dataset cap keeps the 4 most recent images"
    );
    // The spec's training settings reach the trainer through the Job's settings.
    assert_eq!(
        (
            &report["batchSize"],
            &report["epochsRequested"],
            &report["trainableLayers"]
        ),
        (&json!(4), &json!(1), &json!("boxRegression"))
    );
    let model = dataset.join(contract::model_file(3));
    assert!(model.is_file());
    // It trained on a snapshot of the volume (the capture worker keeps writing meanwhile):
    // hard links, nothing copied, kept for a restarted attempt.
    let snapshot = dataset.join(contract::training_run_dir(3)).join("dataset");
    use std::os::unix::fs::MetadataExt;
    let inode = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(snapshot.join("eval/images/000450.png")),
        inode(dataset.join("eval/images/000450.png"))
    );
    assert_eq!(
        std::fs::read(snapshot.join(contract::DATASET_EVAL_FILE)).unwrap(),
        std::fs::read(dataset.join(contract::DATASET_EVAL_FILE)).unwrap()
    );
    assert!(snapshot.join(".complete").is_file());

    let status = tunings.get_status(&tuning.name_any()).await.unwrap();
    let candidate = status
        .status
        .unwrap()
        .candidate_model
        .expect("candidateModel reported");
    assert_eq!(candidate.version, 3);
    assert_eq!(candidate.uri, format!("file://{}", model.display()));
    assert!((candidate.map - report["after"]["ap"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(candidate.baseline_map, report["before"]["ap"].as_f64());
    // The gain's lower bound over the eval images, which the gate holds against the margin.
    let bound = report["gain"]["apLowerBound"]
        .as_f64()
        .expect("the report bounds the gain");
    assert_eq!(candidate.map_gain_lower_bound, Some(bound.clamp(-1.0, 1.0)));
    assert!(candidate.trained_at.is_some());
    let fresh = tunings.get(&tuning.name_any()).await.unwrap();
    let managers: Vec<_> = fresh
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&TRAINER_FIELD_MANAGER.to_string()),
        "{managers:?}"
    );

    // The same identity may not report for another camera.
    let (ok, err) = run_trainer(&kubeconfig, &ns, "other", &dataset, &settings(&local_student()));
    assert!(!ok && err.contains("other") && err.contains("forbidden"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_s3_dataset_is_mirrored_and_the_results_and_checkpoint_go_back_to_it() {
    let plane = shared(Options::default()).await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "trainer-s3").await.unwrap();
    let (tuning, account) = tuning_with_worker_identity(&admin, &ns, "dock", Some(3), |_| {}).await;
    let dir = std::env::temp_dir().join(format!("autotuner-trainer-s3-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = worker_kubeconfig(plane, &ns, &account, &dir).await;

    // The capture worker's dataset, in a bucket.
    let s3 = S3Server::start("datasets");
    let source = dir.join("source");
    split(&source, contract::DATASET_TRAIN_FILE, &[20, 60, 100, 140, 180]);
    split(&source, contract::DATASET_EVAL_FILE, &[450, 500]);
    for file in files_below(&source) {
        let key = file.to_str().unwrap();
        let (code, _) = s3.request(
            "PUT",
            &format!("/datasets/site/dock/{key}"),
            &std::fs::read(source.join(&file)).unwrap(),
        );
        assert_eq!(code, 200, "{key}");
    }
    let env = |work: &str| {
        vec![
            (contract::ENV_S3_ENDPOINT, s3.endpoint.clone()),
            (contract::ENV_AWS_ACCESS_KEY_ID, "test".to_string()),
            (contract::ENV_AWS_SECRET_ACCESS_KEY, "test-secret".to_string()),
            (contract::ENV_WORK_DIR, dir.join(work).display().to_string()),
        ]
    };

    let epochs = |epochs| TrainingSettings {
        epochs,
        ..settings(&local_student())
    };
    // A first pod does one epoch, then "loses its disk"; a second pod on a fresh disk resumes
    // from the checkpoint the first one stored.
    let uri = "s3://datasets/site/dock";
    let (ok, err) = run_trainer_with(
        &kubeconfig,
        &ns,
        &tuning.name_any(),
        uri,
        &epochs(1),
        &env("pod-1"),
    );
    assert!(ok, "{err}");
    let (code, _) = s3.request("GET", "/datasets/site/dock/runs/3/checkpoint.bin", b"");
    assert_eq!(code, 200, "the checkpoint is stored after each epoch");
    std::fs::remove_dir_all(dir.join("pod-1")).unwrap();
    let (ok, err) = run_trainer_with(
        &kubeconfig,
        &ns,
        &tuning.name_any(),
        uri,
        &epochs(2),
        &env("pod-2"),
    );
    assert!(ok, "{err}");
    let mirror = dir.join("pod-2/dataset");
    assert!(
        mirror.join("train/images/000100.png").is_file(),
        "the dataset is mirrored"
    );

    let (code, stored_report) = s3.request("GET", "/datasets/site/dock/runs/3/report.json", b"");
    assert_eq!(code, 200);
    let report: Value = serde_json::from_slice(&stored_report).unwrap();
    assert_eq!(report["resumedFromEpoch"], 1, "the second pod resumed");
    assert_eq!(report["train"]["images"], 4, "the dataset cap still applies");
    let (code, model) = s3.request("GET", "/datasets/site/dock/models/3.onnx", b"");
    assert_eq!(code, 200);
    assert_eq!(
        model,
        std::fs::read(mirror.join("runs/3/model.onnx")).unwrap(),
        "the published model is the exported one"
    );
    let status = Api::<CameraTuning>::namespaced(admin.clone(), &ns)
        .get_status(&tuning.name_any())
        .await
        .unwrap();
    let candidate = status
        .status
        .unwrap()
        .candidate_model
        .expect("candidateModel reported");
    assert_eq!(candidate.uri, "s3://datasets/site/dock/models/3.onnx");

    // A dataset that is not there fails the Job with a message that names it.
    let (ok, err) = run_trainer_with(
        &kubeconfig,
        &ns,
        &tuning.name_any(),
        "s3://datasets/nowhere",
        &epochs(1),
        &env("pod-3"),
    );
    assert!(!ok && err.contains("annotations.json"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// `manifests/examples/minimal.yaml` with its model URIs pointing at a local HTTP server, driven
/// by the real operator to its first training Job; the Job's container is run as the pod would
/// run it (its environment, its ServiceAccount, the dataset volume at a local folder): the
/// trainer fetches the student over HTTP, trains, and its candidate is promoted.
#[tokio::test]
async fn the_minimal_example_trains_through_a_job_that_fetches_its_models_over_http() {
    let plane = shared(Options {
        controllers: true,
        node: false,
    })
    .await;
    let admin: Client = plane.client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = test_namespace(&admin, "minimal").await.unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(admin.clone(), &ns);
    let models = FileServer::start(&assets().join("models"));
    let (teacher_url, student_url) = (
        models.url("yolov12n.onnx"),
        models.url("ssd_mobilenet_v2_coco_raw.onnx"),
    );
    let mut example: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(autotuner_tests::repo_root().join("manifests/examples/minimal.yaml"))
            .unwrap(),
    )
    .unwrap();
    example["spec"]["annotation"]["teacher"]["model"]["uri"] = json!(teacher_url);
    example["spec"]["training"]["student"]["uri"] = json!(student_url);
    // The outcome is constructed: the Job below trains with a learning rate of 0, so its
    // candidate is its starting point exactly and ties it on the same eval split, which a margin
    // of 0 promotes (the example's default, 0.01, would refuse it). How well a Job trains is a
    // benchmark's subject.
    example["spec"]["rollout"] = json!({ "minImprovement": 0.0 });
    let tuning: CameraTuning = serde_json::from_value(example).unwrap();
    tunings.create(&PostParams::default(), &tuning).await.unwrap();
    let name = tuning.name_any();
    let op = operator::start(plane, &ns, "minimal").await;
    let phase = |phase: Phase| {
        let tunings = tunings.clone();
        let name = name.clone();
        async move {
            wait_for(Duration::from_secs(90), || async {
                let t = tunings.get(&name).await.ok()?;
                (t.status.as_ref()?.phase == Some(phase)).then_some(t)
            })
            .await
            .unwrap_or_else(|_| panic!("{name} never reached {phase:?}"))
        }
    };
    phase(Phase::Capturing).await;

    // The annotator the operator made serves the teacher from its HTTP URI, through the fetcher
    // the annotator's main calls.
    let dir = std::env::temp_dir().join(format!("autotuner-trainer-minimal-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let annotators: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let annotator = annotators
        .list(&ListParams::default().labels("app.kubernetes.io/component=annotator"))
        .await
        .unwrap()
        .items
        .remove(0);
    let env = container_env(&annotator.spec.template);
    assert_eq!(env[contract::ENV_TEACHER_URI], teacher_url);
    let teacher =
        autotuner_store::fetch_model(&teacher_url, None, &Default::default(), &dir.join("annotator"))
            .await
            .unwrap();
    assert_eq!(
        std::fs::read(teacher).unwrap(),
        std::fs::read(assets().join("models/yolov12n.onnx")).unwrap()
    );

    // The capture worker filled the training split (the dataset volume, here a local folder).
    let dataset = dir.join("data");
    split(&dataset, contract::DATASET_TRAIN_FILE, &[20, 60, 100, 140]);
    split(&dataset, contract::DATASET_EVAL_FILE, &[450, 500]);
    let report = json!({ "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
        "status": { "dataset": { "train": 1000, "eval": 200 } } });
    tunings
        .patch_status(
            &name,
            &PatchParams::apply(contract::CAPTURE_FIELD_MANAGER).force(),
            &Patch::Apply(&report),
        )
        .await
        .unwrap();
    phase(Phase::Training).await;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let job = wait_for(Duration::from_secs(30), || async {
        jobs.get(&format!("{name}-train-1")).await.ok()
    })
    .await
    .unwrap();
    let env = container_env(&job.spec.unwrap().template);
    let settings = TrainingSettings::from_env_value(&env[contract::ENV_TRAINING]).unwrap();
    assert_eq!(
        settings.base_model_uri, student_url,
        "the spec's student, over HTTP"
    );
    assert_eq!(
        (settings.epochs, settings.learning_rate),
        (contract::defaults::EPOCHS, contract::defaults::LEARNING_RATE),
        "the CRD's defaults"
    );

    // The Job's container, as the pod runs it (one step that changes nothing: the loop, not the
    // learning, is tested).
    let kubeconfig = worker_kubeconfig(plane, &ns, &format!("{name}-worker"), &dir).await;
    let work = dir.join("work");
    let pod = JobPod {
        kubeconfig: &kubeconfig,
        namespace: &ns,
        dataset_uri: &dataset,
        work_dir: &work,
    };
    let mut command = job_pod_command(&trainer(), &pod, &env);
    command.args(["--max-steps", "1", "--views", "1", "--learning-rate", "0"]);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    operator::finish_job_pod(&admin, &ns, &format!("{name}-train-1"), "Succeeded").await;
    let promoted = phase(Phase::Deployed).await;
    let status = promoted.status.unwrap();
    let model = status.current_model.unwrap();
    assert_eq!(model.version, 1);
    assert_eq!(
        Some(model.map),
        model.baseline_map,
        "the candidate tied its starting point"
    );
    assert_eq!(
        model.uri,
        format!("file://{}", dataset.join(contract::model_file(1)).display())
    );
    assert_eq!(
        status.previous_model.unwrap().uri,
        student_url,
        "kept to roll back to"
    );
    op.task.abort();
    std::fs::remove_dir_all(dir).ok();
}
