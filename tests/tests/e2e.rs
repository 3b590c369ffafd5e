//! The whole loop in pods on a real node: `helm install` of the chart with the images
//! `scripts/images` builds, a CameraTuning applied with kubectl, and every pod the operator makes
//! running in containerd under the restricted Pod Security profile. Nothing is played: the
//! capture pod reads a real RTSP camera and labels crops through the annotator's Service by its
//! DNS name, the dataset sits on a PersistentVolume, the training Job's pod trains and reports, the
//! operator promotes, and the capture pod serves the tuned student. Faults on the way: the
//! capture pod, the annotator's pod and the operator's pods are deleted mid-capture. Finally
//! deleting the CameraTuning removes everything it made, and the node leaves the machine as it
//! found it. The camera needs credentials (a Secret): its password shows in no log, Event or
//! status of the whole run.
//!
//! Mocked: only the GPU (the node advertises one `nvidia.com/gpu`, so the annotator's placement
//! is real, and the annotator runs on the CPU) and the camera (GStreamer's RTSP server on the
//! host playing vtest.avi). Needs root. Wall time per stage: `bench-results/e2e.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autotuner_api::{CameraTuning, CameraTuningStatus, ModelStatus, Phase};
use autotuner_tests::plot;
use autotuner_tests::prometheus::{
    Prometheus, alert_queries, dashboard_queries, legend, metrics_read, with_variables,
};
use autotuner_tests::workers::{FileServer, encode_vtest, wait_for_listener_on};
use autotuner_tests::{
    ControlPlane, DNS_REFUSED, NODE_IP, NODE_NAME, NODE_SYSCTLS, Options, ServingCertificate, dns_query,
    expect_success, helm, repo_root,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

const NAME: &str = "lobby";
const NS: &str = "cameras";
const RELEASE_NS: &str = "autotuner-system";
const STUDENT: &str = "ssd_mobilenet_v2_coco_raw.onnx";
/// The spec's highest threshold: the zoomed-out scene's first checks fall far below it (0.57 in a
/// run, and lower as more samples come from that scene), so the drift stage does not hang on
/// what 8 samples happen to show. (A check of the unchanged scene may cross it too, being near
/// 1.0 by definition, which starts the same stage a little earlier: this test is about the loop
/// running in pods; when a check must fall and when it must not is `workers/capture/tests/
/// drift.rs` and `tuning_loop.rs`'s subject.)
const MIN_RELATIVE_ACCURACY: f64 = 1.0;
/// How long pods may take to start, load their models and label a first batch. These stages
/// took 15-30 s on the 2-core EPYC (the slower kind), and over 180 s once with a build running
/// beside the test: each wait ends at its event, so only a failure waits this long.
const POD_WAIT: Duration = Duration::from_secs(600);
/// The dataset's sizes: a round trains at `TRAIN_SIZE` and `EVAL_SIZE` images, and the splits keep
/// this many of their latest images. Small: the loop's path is the same at any size, and every
/// image is a teacher call and part of two Jobs on two cores.
const TRAIN_SIZE: u64 = 16;
const EVAL_SIZE: u64 = 8;
const MAX_DATASET_SIZE: u64 = 16;
/// The camera's credentials, from a Secret the CameraTuning references: the RTSP server refuses
/// a client without them, and no log line, Event or status of the whole run may hold the password.
const CAMERA_USER: &str = "lobby-viewer";
const CAMERA_PASSWORD: &str = "e2e-Camera-S3cret-4f1c9";

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_runs_in_pods_on_a_real_node_from_helm_install_to_delete() {
    let machine_before = MachineState::read();
    let plane = ControlPlane::start(Options {
        controllers: true,
        node: true,
    })
    .await
    .unwrap();
    let mut run = Run::new(&plane).await;
    // Cluster DNS answers cluster names and refuses every other (it has no upstream to ask).
    assert_eq!(
        dns_query("kubernetes.default.svc.cluster.local"),
        Some(Ok([10, 96, 0, 1]))
    );
    assert_eq!(dns_query("example.com"), Some(Err(DNS_REFUSED)));
    // Nothing is forwarded off the node's bridge: the isolation rule comes first, ahead of
    // anything kube-proxy added.
    let forward = Command::new("iptables")
        .args(["-t", "mangle", "-S", "FORWARD"])
        .output()
        .unwrap();
    let forward = String::from_utf8(forward.stdout).unwrap();
    assert_eq!(
        forward.lines().nth(1),
        Some("-A FORWARD -j EDGE-AUTOTUNER-ISOLATE"),
        "{forward}"
    );
    run.install_chart();
    run.stage("helm install: the operator runs");
    let discovered = plane.dir().join("prometheus-targets");
    std::fs::create_dir_all(&discovered).unwrap();
    let discovery = tokio::spawn(discover(run.admin.clone(), discovered.clone()));
    let prometheus = Prometheus::start(plane.dir(), "5s", &scrape_configs(&discovered))
        .await
        .unwrap();

    let mut camera = Camera::start(plane.dir());
    let models = FileServer::start_on(&assets().join("models"), NODE_IP);
    let dataset = run.dataset_volume();
    let tls_key = run.apply_tuning(&camera, &models);
    run.until("capturing with the workloads running", POD_WAIT, |s, pods| {
        (s.phase == Some(Phase::Capturing)
            && pods.running("capture") == 1
            && pods.running("annotator") == 1
            && s.dataset.as_ref()?.annotated? > 0)
            .then_some(())
    })
    .await;
    run.stage("capture labels crops through the annotator's Service");
    let pods = run.pods().await;
    assert_eq!(
        pods.node_of("capture"),
        NODE_NAME,
        "the capture pod runs on the camera node"
    );
    assert_eq!(
        pods.node_of("annotator"),
        NODE_NAME,
        "the annotator runs on the GPU node"
    );

    // The capture pod reaches the annotator by its Service's DNS name.
    let annotator_url = run.kubectl(&[
        "-n",
        NS,
        "get",
        "deployment",
        &format!("{NAME}-capture"),
        "-o",
        &format!(
            "jsonpath={{..env[?(@.name==\"{}\")].value}}",
            autotuner_api::contract::ENV_ANNOTATOR_URL
        ),
    ]);
    // Over HTTPS (the TLS Secret): the annotator serves its API on its `https` port only.
    let host = annotator_url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{annotator_url}"))
        .split(':')
        .next()
        .unwrap();
    assert!(
        host.parse::<std::net::IpAddr>().is_err() && !host.is_empty(),
        "{annotator_url}"
    );
    let annotator_args = run.kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=annotator",
        "-o",
        "jsonpath={..args}",
    ]);
    assert!(annotator_args.contains("--tls-cert-file"), "{annotator_args}");

    // The annotator admits the capture pods of its namespace and the metrics scraper only (the
    // test node's bridge network does not enforce policies; the object is what is checked).
    let policy: Value = serde_json::from_str(&run.kubectl(&[
        "-n",
        NS,
        "get",
        "networkpolicy",
        "-l",
        "app.kubernetes.io/component=annotator",
        "-o",
        "json",
    ]))
    .unwrap();
    let from = &policy["items"][0]["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "capture",
        "{policy:#}"
    );

    // Faults mid-capture: each pod is replaced, and the loop goes on where it was.
    let before = run.pods().await;
    let replaced = [before.name_of("capture"), before.name_of("annotator")];
    run.delete_pods(NS, "app.kubernetes.io/component=capture");
    run.delete_pods(NS, "app.kubernetes.io/component=annotator");
    run.delete_pods(RELEASE_NS, "app.kubernetes.io/component=operator");
    run.until("new capture and annotator pods run", POD_WAIT, |_, pods| {
        let new = |c| pods.running(c) == 1 && !replaced.contains(&pods.name_of(c));
        (new("capture") && new("annotator")).then_some(())
    })
    .await;
    let annotated = run.status().await.dataset.unwrap().annotated.unwrap_or(0);
    run.until(
        "the new capture pod labels through the new annotator",
        POD_WAIT,
        |s, _| (s.dataset.as_ref()?.annotated? > annotated).then_some(()),
    )
    .await;
    run.stage("capture, annotator and operator pods deleted and replaced");

    // (Or it already ran: a Job on this small a round may start and end between two polls.)
    run.until(
        "the training Job's pod runs",
        Duration::from_secs(600),
        |s, pods| {
            let runs = s.phase == Some(Phase::Training) && pods.running("trainer") == 1;
            (runs || s.current_model.is_some()).then_some(())
        },
    )
    .await;
    run.stage("the round is collected; the Job's pod trains");
    // At minImprovement -1 the gate deploys iteration 1 whatever it scored against the
    // off-the-shelf student (a 40-image fine-tune lost by 0.001 in some runs, which the default
    // gate rightly refuses: plan.rs and tests/tests/operator.rs test both of its branches).
    let model = run
        .until("iteration 1 promoted", Duration::from_secs(900), |s, _| {
            s.current_model.clone().filter(|m| m.version == 1)
        })
        .await;
    // Nothing lost or duplicated by the capture pod's deletion mid-capture.
    dataset.assert_consistent();
    serve_and_drift(&mut run, &mut camera, plane.dir(), &dataset, model).await;
    assert_monitoring(&prometheus).await;
    picture_dashboards(&prometheus, plane.dir(), run.started.elapsed()).await;
    run.stage("Prometheus: every dashboard panel and alert reads series of the real pods");

    // Every pod's resolv.conf names the cluster DNS only, never the machine's resolver.
    let resolv_confs = autotuner_tests::pod_resolv_confs();
    assert!(!resolv_confs.is_empty());
    for (sandbox, text) in resolv_confs {
        let servers: Vec<&str> = text.lines().filter(|l| l.starts_with("nameserver")).collect();
        assert_eq!(servers, ["nameserver 10.96.0.10"], "{sandbox}: {text}");
    }
    discovery.abort();
    run.assert_logs_free_of_errors();
    run.assert_no_secret_shown(&tls_key);
    run.assert_restricted_pods();

    // Deleting the CameraTuning removes everything it made.
    expect_success(
        plane
            .kubectl([
                "-n",
                NS,
                "delete",
                "cameratuning",
                NAME,
                "--wait=true",
                "--timeout=120s",
            ])
            .unwrap(),
        "kubectl delete cameratuning",
    )
    .unwrap();
    run.until_gone().await;
    for secret in [format!("{NAME}-camera"), format!("{NAME}-annotator-tls")] {
        assert_eq!(
            run.kubectl(&["-n", NS, "get", "secret", &secret, "-o", "name"])
                .trim(),
            format!("secret/{secret}"),
            "the operator leaves the user's Secrets alone"
        );
    }
    run.stage("kubectl delete: everything it made is gone");
    run.write_figures();

    drop(camera);
    drop(models);
    plane.stop();
    let machine_after = MachineState::read();
    machine_before.assert_same(&machine_after);
}

/// Iteration 1 promoted: the edge serves it and checks it; drift starts a new round and a second
/// Job, which the operator judges.
async fn serve_and_drift(
    run: &mut Run<'_>,
    camera: &mut Camera,
    dir: &Path,
    dataset: &Dataset,
    model: ModelStatus,
) {
    run.stage("the Job reported; the operator promoted iteration 1");
    eprintln!(
        "iteration 1: AP@[.5:.95] {:.3} (off the shelf {:?})",
        model.map, model.baseline_map
    );
    assert!(model.uri.ends_with("/1.onnx"), "{}", model.uri);
    run.print_trainer_log(1);

    // The capture pod serves the tuned student: it swapped it in without a restart.
    let served = run
        .until(
            "the edge serves iteration 1",
            Duration::from_secs(180),
            |_, pods| {
                let metrics = http_get(&pods.ip_of("capture")?, 9090, "/metrics")?;
                metrics
                    .lines()
                    .any(|l| {
                        l.starts_with("autotuner_edge_model_info{")
                            && l.contains("version=\"1\"")
                            && l.ends_with(" 1")
                    })
                    .then_some(metrics)
            },
        )
        .await;
    assert!(counter(&served, "autotuner_edge_frames_total") > 0.0, "{served}");
    run.stage("the capture pod serves the tuned student");

    // The edge measures drift: the capture pod runs iteration 1 on the drift samples and writes
    // the check into the status.
    let check = run
        .until(
            "the edge's first drift check of iteration 1",
            Duration::from_secs(300),
            |s, _| {
                let check = s.last_drift_check.as_ref()?;
                (check.model_version == Some(1)).then(|| check.clone())
            },
        )
        .await;
    eprintln!(
        "drift check: relative accuracy {:.2} on {:?} samples",
        check.relative_accuracy, check.sample_size
    );
    run.stage("the capture pod's drift check is in the status");

    // Drift: the camera zooms out, the edge's checks fall below the threshold, the operator
    // starts a new round on what the camera sees now, and a second Job's pod trains on it.
    camera.zoom_out(dir);
    let drift = run
        .until("drift detected", Duration::from_secs(300), |s, _| {
            let condition = s.conditions.iter().find(|c| c.type_ == "DriftDetected")?;
            (s.phase == Some(Phase::Retraining) && condition.status == "True")
                .then(|| condition.message.clone())
        })
        .await;
    eprintln!("drift: {drift}");
    run.stage("drift: a check below the threshold started a new round");
    run.until(
        "iteration 2's Job pod trains",
        Duration::from_secs(300),
        |s, pods| {
            let judged = s.current_model.as_ref().is_some_and(|m| m.version == 2);
            (pods.running("trainer") == 1 || judged).then_some(())
        },
    )
    .await;
    run.stage("the round after the drift is collected; the second Job's pod trains");
    let outcome = run
        .until("iteration 2 judged", Duration::from_secs(900), |s, _| {
            if s.current_model.as_ref().is_some_and(|m| m.version == 2) {
                return Some("promoted");
            }
            // Rejected: iteration 1 stays, and the event says why.
            let rejections = run.kubectl(&[
                "-n",
                NS,
                "get",
                "events",
                "--field-selector",
                "reason=CandidateRejected",
                "-o",
                "name",
            ]);
            (!rejections.trim().is_empty()).then_some("rejected")
        })
        .await;
    assert_eq!(outcome, "promoted", "minImprovement -1 deploys every candidate");
    run.stage("the operator promoted iteration 2");
    run.print_trainer_log(2);
    // Still consistent after the training split rolled past `maxDatasetSize`.
    dataset.assert_consistent();
}

/// Scrape jobs of what the Prometheus Operator makes of the chart's ServiceMonitor
/// (`honorLabels`: the operator's per-CameraTuning labels stand) and PodMonitor. Debian builds
/// Prometheus without Kubernetes service discovery, so [`discover`] stands in for it.
fn scrape_configs(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"  - job_name: operator
    honor_labels: true
    file_sd_configs: [{{ files: ["{dir}/operator.json"], refresh_interval: 5s }}]
  - job_name: workers
    file_sd_configs: [{{ files: ["{dir}/workers.json"], refresh_interval: 5s }}]
"#
    )
}

/// Lists the pods every 2 s and writes them as Prometheus file-discovery targets: the operator's
/// on its metrics port, the capture and annotator pods on their `http` port labelled as the
/// chart's PodMonitor relabels them (namespace, pod, cameratuning from
/// `app.kubernetes.io/instance`, component). `chart.rs` pins the monitors to these labels.
async fn discover(client: Client, dir: PathBuf) {
    let pods: Api<Pod> = Api::all(client);
    loop {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for job in ["operator", "workers"] {
                let targets: Vec<Value> = list
                    .items
                    .iter()
                    .filter_map(scrape_target)
                    .filter(|(of, _)| *of == job)
                    .map(|(_, target)| target)
                    .collect();
                let staged = dir.join(format!(".{job}.json"));
                std::fs::write(&staged, Value::from(targets).to_string()).unwrap();
                std::fs::rename(&staged, dir.join(format!("{job}.json"))).unwrap();
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The scrape job and file-discovery target of a pod the monitors select, if it is one.
fn scrape_target(pod: &Pod) -> Option<(&'static str, Value)> {
    let labels = pod.metadata.labels.as_ref()?;
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let port_named = |name: &str| {
        pod.spec.as_ref()?.containers.iter().find_map(|c| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
        })
    };
    let name = pod.metadata.name.as_deref()?;
    let managed = labels.get("app.kubernetes.io/managed-by").map(String::as_str)
        == Some(autotuner_operator::children::labels::MANAGER);
    match labels.get("app.kubernetes.io/component").map(String::as_str)? {
        "operator" => {
            let port = port_named("http-metrics")?;
            let target =
                serde_json::json!({ "targets": [format!("{ip}:{port}")], "labels": { "pod": name } });
            Some(("operator", target))
        }
        component @ ("capture" | "annotator") if managed => {
            let port = port_named("http")?;
            let mut target_labels = serde_json::json!({
                "namespace": pod.metadata.namespace, "pod": name, "component": component,
            });
            if let Some(instance) = labels.get("app.kubernetes.io/instance") {
                target_labels["cameratuning"] = Value::from(instance.as_str());
            }
            let target = serde_json::json!({ "targets": [format!("{ip}:{port}")], "labels": target_labels });
            Some(("workers", target))
        }
        _ => None,
    }
}

/// After a whole loop in pods: Prometheus scraped the operator, the annotator and the capture
/// pod; every `/metrics` passes `promtool check metrics`; every metric each dashboard panel,
/// variable and alert reads has series (a camera panel's under this CameraTuning's labels); every
/// expression is valid PromQL; and every panel shows data.
async fn assert_monitoring(prometheus: &Prometheus) {
    let targets = prometheus.targets().await.unwrap();
    for (job, component) in [
        ("operator", None),
        ("workers", Some("capture")),
        ("workers", Some("annotator")),
    ] {
        let up = targets.iter().any(|t| {
            t["labels"]["job"] == job
                && component.is_none_or(|c| t["labels"]["component"] == c)
                && t["health"] == "up"
        });
        assert!(up, "no {job} {component:?} target up: {targets:#?}");
    }
    let promtool = autotuner_tests::prometheus_binaries().unwrap().join("promtool");
    for target in targets.iter().filter(|t| t["health"] == "up") {
        let url = target["scrapeUrl"].as_str().unwrap();
        let body = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .and_then(|answer| answer.error_for_status())
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .text()
            .await
            .unwrap();
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        check.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics on {url}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let variables = [("namespace", NS), ("cameratuning", NAME)];
    let camera = format!("namespace=\"{NS}\", cameratuning=\"{NAME}\"");
    let annotators = format!("namespace=\"{NS}\", component=\"annotator\"");
    let queries: Vec<_> = dashboard_queries().into_iter().chain(alert_queries()).collect();
    let all_panels: BTreeSet<_> = queries
        .iter()
        .filter(|q| q.panel)
        .map(|q| (q.file.clone(), q.title.clone()))
        .collect();
    // The series of the state just reached appear with the next scrapes (every 5 s): the round's
    // deadline, say, which the operator exports only while no Job trains. So the queries are
    // read again until all have data, for up to a minute.
    let settled = Instant::now() + Duration::from_secs(60);
    let (missing, panels_with_data) = loop {
        let (missing, panels) = read_queries(prometheus, &queries, &camera, &annotators, &variables).await;
        if (missing.is_empty() && panels == all_panels) || Instant::now() > settled {
            break (missing, panels);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    assert!(missing.is_empty(), "{missing:#?}");
    let blank: BTreeSet<_> = all_panels.difference(&panels_with_data).collect();
    assert!(blank.is_empty(), "dashboard panels with no data: {blank:#?}");
    eprintln!(
        "prometheus: {} targets, {} queries, {} panels with data",
        targets.len(),
        queries.len(),
        panels_with_data.len()
    );
}

/// Each query's series (`missing`: the metrics it reads that have none) and the panels that show
/// data now.
async fn read_queries(
    prometheus: &Prometheus,
    queries: &[autotuner_tests::prometheus::ShippedQuery],
    camera: &str,
    annotators: &str,
    variables: &[(&str, &str)],
) -> (Vec<String>, BTreeSet<(String, String)>) {
    let mut missing = Vec::new();
    let mut panels_with_data = BTreeSet::new();
    for query in queries {
        for name in metrics_read(&query.expr) {
            // A camera panel's series are the CameraTuning's, or its namespace's annotators'.
            let labels = match query.file.as_str() {
                "camera.json" if name.starts_with("autotuner_annotator_") => annotators,
                "camera.json" => camera,
                _ => "",
            };
            let selector = format!("count({{__name__=~\"{name}(_bucket)?\", {labels}}})");
            if prometheus.query(&selector).await.unwrap().is_empty() {
                missing.push(format!(
                    "{} {:?} reads {name}{{{labels}}}: no series",
                    query.file, query.title
                ));
            }
        }
        if query.panel || query.file == "alerts.yaml" {
            let expr = with_variables(&query.expr, variables);
            let result = prometheus
                .query(&expr)
                .await
                .unwrap_or_else(|e| panic!("{} {:?}: not valid PromQL: {e}", query.file, query.title));
            if query.panel && !result.is_empty() {
                panels_with_data.insert((query.file.clone(), query.title.clone()));
            }
        }
    }
    (missing, panels_with_data)
}

/// A PNG per dashboard row, `bench-results/dashboards/<dashboard>-<row>.png`, plotted from what
/// Prometheus holds of this run: what a user would see in Grafana.
async fn picture_dashboards(prometheus: &Prometheus, dir: &Path, span: Duration) {
    let out = repo_root().join("bench-results/dashboards");
    std::fs::create_dir_all(&out).unwrap();
    let variables = [("namespace", NS), ("cameratuning", NAME)];
    let queries: Vec<_> = dashboard_queries().into_iter().filter(|q| q.panel).collect();
    // The run's start, in Prometheus' time (seconds since the epoch).
    let origin = (std::time::SystemTime::now() - span)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut rows: Vec<(String, String)> = queries.iter().map(|q| (q.file.clone(), q.row.clone())).collect();
    rows.dedup();
    for (file, row) in rows {
        let mut panels: Vec<plot::Panel> = Vec::new();
        for query in queries.iter().filter(|q| q.file == file && q.row == row) {
            if panels.last().is_none_or(|p| p.title != query.title) {
                panels.push(plot::Panel {
                    title: query.title.clone(),
                    unit: query.unit.clone(),
                    series: Vec::new(),
                });
            }
            let expr = with_variables(&query.expr, &variables);
            let series = prometheus
                .query_range(&expr, span, Duration::from_secs(10))
                .await
                .unwrap();
            let panel = panels.last_mut().unwrap();
            for s in series {
                let points = s.points.iter().map(|&(t, v)| (t - origin, v)).collect();
                panel.series.push((legend(&query.legend, &s.labels), points));
            }
        }
        let stem = format!(
            "{}-{}",
            file.trim_end_matches(".json"),
            row.to_lowercase().replace(' ', "-")
        );
        let title = format!("Edge AutoTuner / {}: {row}", file.trim_end_matches(".json"));
        plot::row(
            &title,
            &panels,
            &dir.join(format!("{stem}.svg")),
            &out.join(format!("{stem}.png")),
        )
        .unwrap();
    }
}

/// One run: the control plane with its node, and the wall time of each stage.
struct Run<'a> {
    plane: &'a ControlPlane,
    admin: Client,
    stages: Vec<(String, f64)>,
    started: Instant,
    last: Instant,
}

impl<'a> Run<'a> {
    async fn new(plane: &'a ControlPlane) -> Self {
        Self {
            plane,
            admin: plane.client().await.unwrap(),
            stages: Vec::new(),
            started: Instant::now(),
            last: Instant::now(),
        }
    }

    fn stage(&mut self, what: &str) {
        let seconds = self.last.elapsed().as_secs_f64();
        eprintln!(
            "{:>6.1} s (+{seconds:.1} s): {what}",
            self.started.elapsed().as_secs_f64()
        );
        self.stages.push((what.to_string(), seconds));
        self.last = Instant::now();
    }

    /// Where the Job of `iteration` spent its time: the trainer's log lines other than its
    /// progress reports, with the times the kubelet stamped on them.
    fn print_trainer_log(&self, iteration: u32) {
        let job = format!(
            "job/{}",
            autotuner_operator::children::names::training_job(NAME, iteration)
        );
        let log = self.kubectl(&["-n", NS, "logs", &job, "--timestamps"]);
        for line in log.lines().filter(|l| !l.contains("progress")).take(40) {
            eprintln!("  {job}: {line}");
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        expect_success(
            self.plane.kubectl(args).unwrap(),
            &format!("kubectl {}", args.join(" ")),
        )
        .unwrap()
    }

    fn kubectl_apply(&self, yaml: &str) {
        let output = self.plane.kubectl_stdin(["apply", "-f", "-"], yaml).unwrap();
        expect_success(output, "kubectl apply").unwrap();
    }

    /// Namespaces that admit only pods meeting the restricted Pod Security profile.
    fn restricted_namespace(&self, name: &str) {
        self.kubectl_apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n"
        ));
    }

    /// `helm install` of the chart as a user would, with the images the node imported.
    fn install_chart(&self) {
        self.restricted_namespace(RELEASE_NS);
        let chart = repo_root().join("charts/edge-autotuner");
        let output = helm(
            self.plane,
            &[
                "install",
                "edge-autotuner",
                chart.to_str().unwrap(),
                "--namespace",
                RELEASE_NS,
                "--wait",
                "--timeout",
                "3m",
            ],
        )
        .unwrap();
        if let Err(e) = expect_success(output, "helm install") {
            // What kept the release from becoming ready: its pods, their events and logs.
            let kubectl = |args: &[&str]| {
                self.plane
                    .kubectl(args)
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
                    })
                    .unwrap_or_else(|e| e.to_string())
            };
            panic!(
                "{e:#}\n{}\n{}\n{}",
                kubectl(&["-n", RELEASE_NS, "get", "pods", "-o", "wide"]),
                kubectl(&["-n", RELEASE_NS, "get", "events", "--sort-by=.lastTimestamp"]),
                kubectl(&[
                    "-n",
                    RELEASE_NS,
                    "logs",
                    "-l",
                    "app.kubernetes.io/instance=edge-autotuner",
                    "--all-containers",
                    "--tail=30",
                    "--prefix"
                ]),
            );
        }
        // The chart's own test: a pod of the operator's image reaches its Service through
        // cluster DNS and finds it ready.
        let output = helm(
            self.plane,
            &[
                "test",
                "edge-autotuner",
                "--namespace",
                RELEASE_NS,
                "--timeout",
                "2m",
            ],
        )
        .unwrap();
        expect_success(output, "helm test").unwrap();
    }

    /// A PersistentVolume for the dataset claim the operator makes: a folder on the node (there
    /// is no provisioner), readable here to check what the pods wrote.
    fn dataset_volume(&self) -> Dataset {
        self.restricted_namespace(NS);
        let root = self.plane.dir().join("volumes/dataset");
        std::fs::create_dir_all(&root).unwrap();
        // The pods run as 65532; a hostPath volume ignores fsGroup.
        std::os::unix::fs::chown(&root, Some(65532), Some(65532)).unwrap();
        self.kubectl_apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {NS}-{NAME}-dataset\nspec:\n  \
             capacity: {{ storage: 5Gi }}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  \
             storageClassName: \"\"\n  claimRef: {{ namespace: {NS}, name: {NAME}-dataset }}\n  \
             hostPath: {{ path: {}, type: Directory }}\n",
            root.display()
        ));
        Dataset { root }
    }

    /// The camera's Secret, the annotator's TLS Secret (a certificate for the annotator's Service
    /// name, which the teacher's spec determines) and the CameraTuning. Returns the TLS key.
    fn apply_tuning(&self, camera: &Camera, models: &FileServer) -> String {
        self.kubectl_apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {NAME}-camera, namespace: {NS} }}\n\
             stringData: {{ username: {CAMERA_USER}, password: {CAMERA_PASSWORD} }}\n"
        ));
        let tuning = format!(
            r#"apiVersion: autotuner.io/v1alpha1
kind: CameraTuning
metadata: {{ name: {NAME}, namespace: {NS} }}
spec:
  camera:
    url: {camera}
    credentialsSecretRef: {{ name: {NAME}-camera }}
    nodeSelector: {{ autotuner.io/camera-node: "true" }}
    resources: {{ requests: {{ cpu: 100m, memory: 256Mi }} }}
  classes: [person]
  # One label a second: a round's 24 images in under a minute, and the teacher (YOLO on the
  # CPU here) leaves the machine's second core to the rest.
  sampling: {{ maxUploadsPerMinute: 60 }}
  # The capture pods label over HTTPS, trusting the Secret's issuer alone.
  annotation:
    teacher:
      model: {{ uri: {teacher}, family: yolo }}
      tlsSecretName: {NAME}-annotator-tls
      gpus: 1
      resources: {{ requests: {{ cpu: 100m, memory: 256Mi }} }}
  dataset:
    trainSize: {TRAIN_SIZE}
    evalSize: {EVAL_SIZE}
    storage: {{ persistentVolumeClaim: {{ size: 1Gi }} }}
  training:
    student: {{ uri: {student}, family: ssdRaw }}
    minTrainSize: 8
    # The heads alone: this test is of the loop, not of accuracy, and trains twice in pods.
    trainableLayers: boxRegression
    epochs: 1
    batchSize: 8
    learningRate: 0.001
    # A CPU's request weighs the Job ten times the capture and annotator pods, which keep
    # working beside it: as a training Job would ask on a real node.
    resources: {{ requests: {{ cpu: "1", memory: 512Mi }} }}
  inference: {{ maxFramesPerSecond: 2 }}
  # maxDatasetSize: the second Job trains on the latest {MAX_DATASET_SIZE} images, as the first did.
  drift: {{ checkInterval: 10s, sampleSize: 8, minRelativeAccuracy: {MIN_RELATIVE_ACCURACY}, maxDatasetSize: {MAX_DATASET_SIZE} }}
  # Every candidate is deployed and none is rolled back: the outcome is constructed, so the
  # stages after a promotion (serving, drift, the second Job, Prometheus) run every time. Whether
  # a candidate beats its starting point is the gate's unit tests' and the benchmarks' subject.
  rollout: {{ minImprovement: -1.0, rollbackMargin: 1.0 }}
"#,
            camera = camera.url(),
            teacher = models.url("yolov12n.onnx"),
            student = models.url(STUDENT),
        );
        let spec: CameraTuning = serde_yaml_ng::from_str(&tuning).unwrap();
        let teacher = spec.spec.annotation.teacher.as_ref().unwrap();
        let service = autotuner_operator::children::names::annotator(
            &autotuner_operator::children::teacher_hash(teacher),
        );
        let names = [
            service.clone(),
            format!("{service}.{NS}"),
            format!("{service}.{NS}.svc"),
        ];
        let tls = ServingCertificate::generate(&names).unwrap();
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": format!("{NAME}-annotator-tls"), "namespace": NS },
            "stringData": { "tls.crt": tls.cert, "tls.key": tls.key, "ca.crt": tls.ca_cert },
        });
        self.kubectl_apply(&secret.to_string());
        self.kubectl_apply(&tuning);
        tls.key
    }

    async fn status(&self) -> CameraTuningStatus {
        let tunings: Api<CameraTuning> = Api::namespaced(self.admin.clone(), NS);
        tunings.get(NAME).await.unwrap().status.unwrap_or_default()
    }

    async fn pods(&self) -> Pods {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NS);
        Pods(pods.list(&ListParams::default()).await.unwrap().items)
    }

    /// Polls the status and the pods until `probe` holds; on a timeout, fails with what the
    /// cluster shows (phase, conditions, pods, events).
    async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&CameraTuningStatus, &Pods) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, pods) = (self.status().await, self.pods().await);
            if let Some(found) = probe(&status, &pods) {
                return found;
            }
            // Failed is terminal until the spec changes: waiting on would only hide the cause.
            let failed = status.phase == Some(Phase::Failed);
            if failed || Instant::now() > deadline {
                // The workers' logs first: a CI summary that keeps only the start of a failure
                // then still shows its cause (a training Job's error, say).
                panic!(
                    "{what}: {}\n{}\nstatus: {}\n{}\n{}",
                    if failed {
                        "the CameraTuning failed".to_string()
                    } else {
                        format!("not within {timeout:?}")
                    },
                    self.worker_logs(),
                    serde_json::to_string_pretty(&status).unwrap(),
                    self.kubectl(&["get", "pods,jobs,pvc", "-A", "-o", "wide"]),
                    self.kubectl(&["-n", NS, "get", "events", "--sort-by=.lastTimestamp"]),
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// The last lines of every worker pod's log in the CameraTuning's namespace (failed
    /// training attempts included), for a failure message that shows the cause.
    fn worker_logs(&self) -> String {
        let names = self.kubectl(&["-n", NS, "get", "pods", "-o", "name"]);
        // Training pods first: when a Job fails, its pods' logs hold the cause.
        let mut names: Vec<&str> = names.lines().collect();
        names.sort_by_key(|pod| !pod.contains("-train-"));
        names
            .into_iter()
            .map(|pod| {
                let logs = self
                    .plane
                    .kubectl(["-n", NS, "logs", pod, "--all-containers", "--tail=25"])
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
                    })
                    .unwrap_or_else(|e| e.to_string());
                format!("--- {pod}\n{logs}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn delete_pods(&self, namespace: &str, selector: &str) {
        self.kubectl(&["-n", namespace, "delete", "pods", "-l", selector, "--wait=false"]);
    }

    /// Every log line of every pod at level ERROR fails (the workers and the operator log JSON
    /// with `--log-json`, or text with the level in capitals).
    fn assert_logs_free_of_errors(&self) {
        for namespace in [NS, RELEASE_NS, "kube-system"] {
            let names = self.kubectl(&["-n", namespace, "get", "pods", "-o", "name"]);
            for pod in names.lines() {
                let logs = self.kubectl(&["-n", namespace, "logs", pod, "--all-containers"]);
                let errors: Vec<&str> = logs
                    .lines()
                    .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{namespace}/{pod} logged errors:\n{}",
                    errors.join("\n")
                );
            }
        }
    }

    /// The camera's password shows nowhere an operator looks: no pod's log (the operator's, the
    /// workers', the training Jobs', the cluster's own), no Event, not the CameraTuning, not the
    /// control plane's and the node's logs.
    /// Neither the camera's password nor the annotator's TLS key (`tls_key`, PEM) shows anywhere.
    fn assert_no_secret_shown(&self, tls_key: &str) {
        let mut places: Vec<(String, String)> = Vec::new();
        for namespace in [NS, RELEASE_NS, "kube-system"] {
            let names = self.kubectl(&["-n", namespace, "get", "pods", "-o", "name"]);
            for pod in names.lines() {
                let logs = self.kubectl(&["-n", namespace, "logs", pod, "--all-containers"]);
                places.push((format!("{namespace}/{pod}'s log"), logs));
            }
        }
        places.push((
            "the Events".into(),
            self.kubectl(&["get", "events", "-A", "-o", "json"]),
        ));
        places.push((
            "the CameraTuning".into(),
            self.kubectl(&["-n", NS, "get", "cameratuning", NAME, "-o", "json"]),
        ));
        for entry in std::fs::read_dir(self.plane.dir()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                places.push((path.display().to_string(), text));
            }
        }
        assert!(places.len() > 10, "{} places read", places.len());
        // The key's body (a line of its base64), as PEM or folded into JSON.
        let key_line = tls_key.lines().find(|l| !l.starts_with("-----")).unwrap();
        for (place, text) in places {
            assert!(
                !text.contains(CAMERA_PASSWORD),
                "the camera's password is in {place}"
            );
            assert!(!text.contains(key_line), "the annotator's TLS key is in {place}");
        }
    }

    /// The namespaces enforce the restricted profile, so every pod in them was admitted under it;
    /// a server-side check of the label confirms that no running pod violates it.
    fn assert_restricted_pods(&self) {
        for namespace in [NS, RELEASE_NS] {
            let output = self
                .plane
                .kubectl([
                    "label",
                    "--dry-run=server",
                    "--overwrite",
                    "namespace",
                    namespace,
                    "pod-security.kubernetes.io/enforce=restricted",
                ])
                .unwrap();
            let warnings = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && !warnings.contains("violate"),
                "{namespace}: {warnings}"
            );
        }
    }

    /// Waits until the CameraTuning's objects are gone (owner references and the finalizer).
    async fn until_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = self.kubectl(&[
                "-n",
                NS,
                "get",
                "deployments,services,networkpolicies,jobs,pvc,pods,configmaps,secrets",
                "-o",
                "name",
            ]);
            // The camera's Secret and the annotator's TLS Secret are the user's, not the
            // CameraTuning's: they stay (checked below).
            let users = [
                format!("secret/{NAME}-camera"),
                format!("secret/{NAME}-annotator-tls"),
            ];
            let left: Vec<&str> = left
                .lines()
                .filter(|l| !l.starts_with("configmap/kube-root-ca.crt") && !users.iter().any(|u| u == l))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left after deleting the CameraTuning: {left:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn write_figures(&self) {
        let stages: Vec<Value> = self
            .stages
            .iter()
            .map(|(what, seconds)| serde_json::json!({ "stage": what, "seconds": (seconds * 10.0).round() / 10.0 }))
            .collect();
        let cpu = autotuner_vision::cpu_model();
        let figures = serde_json::json!({
            "test": "tests/tests/e2e.rs",
            "machine": format!(
                "{cpu}, {} cores, one real node (containerd, kubelet, kube-proxy, CoreDNS)",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            "total_seconds": self.started.elapsed().as_secs(),
            "stages": stages,
        });
        let path = repo_root().join("bench-results/e2e.json");
        std::fs::write(&path, serde_json::to_string_pretty(&figures).unwrap() + "\n").unwrap();
    }
}

/// The namespace's pods, by the component label the operator puts on them.
struct Pods(Vec<Pod>);

impl Pods {
    fn of<'p>(&'p self, component: &'p str) -> impl Iterator<Item = &'p Pod> + 'p {
        self.0.iter().filter(move |p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .map(String::as_str)
                == Some(component)
                && p.metadata.deletion_timestamp.is_none()
        })
    }

    fn running(&self, component: &str) -> usize {
        self.of(component)
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .count()
    }

    fn name_of(&self, component: &str) -> String {
        self.of(component)
            .find_map(|p| p.metadata.name.clone())
            .unwrap_or_default()
    }

    fn node_of(&self, component: &str) -> String {
        self.of(component)
            .find_map(|p| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_default()
    }

    fn ip_of(&self, component: &str) -> Option<String> {
        self.of(component).find_map(|p| p.status.as_ref()?.pod_ip.clone())
    }
}

/// The dataset as the pods left it on the volume.
struct Dataset {
    root: PathBuf,
}

impl Dataset {
    /// Nothing lost, nothing duplicated, after the capture pod was deleted mid-capture: each
    /// split names its images once, they are on the volume, every label belongs to one of them,
    /// and their ids (the split's storage sequence, 1 to `info.stored`) are the latest `cap` with
    /// no gap (a rolling split drops only its oldest).
    fn assert_consistent(&self) {
        for (split, cap) in [("train", MAX_DATASET_SIZE), ("eval", EVAL_SIZE)] {
            let file = self.root.join(split).join("annotations.json");
            // With its journal, as every reader of a split takes it.
            let coco = autotuner_store::journal::read(&file).unwrap().unwrap();
            let images = coco["images"].as_array().unwrap();
            let stored = coco["info"]["stored"].as_u64().unwrap();
            let ids: BTreeSet<u64> = images.iter().map(|i| i["id"].as_u64().unwrap()).collect();
            let names: BTreeSet<&str> = images.iter().map(|i| i["file_name"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), images.len(), "{split}: duplicate image ids");
            assert_eq!(names.len(), images.len(), "{split}: duplicate images");
            let kept = stored.min(cap);
            assert_eq!(
                ids.iter().copied().collect::<Vec<_>>(),
                (stored - kept + 1..=stored).collect::<Vec<_>>(),
                "{split}: images lost ({stored} stored, at most {cap} kept)"
            );
            for name in names {
                assert!(
                    self.root.join(split).join(name).is_file(),
                    "{split}: {name} is missing"
                );
            }
            for annotation in coco["annotations"].as_array().unwrap() {
                assert!(
                    ids.contains(&annotation["image_id"].as_u64().unwrap()),
                    "{split}: a label of no image"
                );
            }
        }
    }
}

/// GStreamer's RTSP server on the node's bridge address, playing vtest.avi (H.264) in a loop.
struct Camera {
    child: Child,
    port: u16,
}

impl Camera {
    fn start(dir: &Path) -> Self {
        let day = encode_vtest(dir, "day.mkv", &[]);
        let port = std::net::TcpListener::bind((NODE_IP, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::serve(&day, port);
        Self { child, port }
    }

    fn serve(clip: &Path, port: u16) -> Child {
        let child = Command::new("/usr/bin/python3")
            .arg(repo_root().join("tests/video/rtsp_server.py"))
            .args(["--address", NODE_IP])
            .arg(clip)
            .arg(port.to_string())
            .args([CAMERA_USER, CAMERA_PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("the RTSP server");
        wait_for_listener_on(NODE_IP, port, "the RTSP server");
        child
    }

    /// The camera zooms out: vtest.avi at half the scale in a grey frame, where the people fall
    /// below the student's smallest anchor and its agreement with the teacher collapses. The
    /// server restarts on the same address, as a camera does after a change of settings.
    fn zoom_out(&mut self, dir: &Path) {
        let zoomed = encode_vtest(
            dir,
            "zoomed-out.mkv",
            &[
                "-frames:v",
                "300",
                "-vf",
                "scale=384:288,pad=768:576:192:144:gray",
            ],
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::serve(&zoomed, self.port);
    }

    fn url(&self) -> String {
        format!("rtsp://{NODE_IP}:{}/live", self.port)
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a node may change on the machine, to compare before and after.
#[derive(Debug, PartialEq)]
struct MachineState {
    links: BTreeSet<String>,
    /// The cgroups at the top of every hierarchy.
    cgroups: BTreeSet<String>,
    mounts: usize,
    iptables: String,
    sysctls: Vec<String>,
    netns: BTreeSet<String>,
}

impl MachineState {
    fn read() -> Self {
        let out = |program: &str, args: &[&str]| {
            String::from_utf8(Command::new(program).args(args).output().unwrap().stdout).unwrap()
        };
        // Rules and chains, each with its table, without the packet counters, the dump's
        // comments and what an untouched table shows (the built-in chains accepting): a table
        // the kernel loaded once stays listed, empty, and that is not something left behind.
        let iptables = ["iptables-save", "ip6tables-save"]
            .iter()
            .flat_map(|program| {
                let mut table = String::new();
                let mut lines = Vec::new();
                for line in out(program, &[]).lines() {
                    let line = line.split(" [").next().unwrap_or_default();
                    if let Some(name) = line.strip_prefix('*') {
                        table = name.to_string();
                    } else if !(line.starts_with('#') || line == "COMMIT" || is_builtin_accepting(line)) {
                        lines.push(format!("{program} {table}: {line}"));
                    }
                }
                lines
            })
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            links: out("ip", &["-o", "link", "show"])
                .lines()
                .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
                .collect(),
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .count(),
            cgroups: std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().display().to_string())
                .collect(),
            iptables,
            sysctls: NODE_SYSCTLS
                .iter()
                .map(|s| {
                    let value = std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap_or_default();
                    format!("{s}={}", value.trim())
                })
                .collect(),
            netns: std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        }
    }

    fn assert_same(&self, after: &Self) {
        assert_eq!(self.links, after.links, "network links left behind");
        assert_eq!(self.mounts, after.mounts, "mounts left behind");
        assert_eq!(self.cgroups, after.cgroups, "cgroups left behind");
        assert_eq!(self.iptables, after.iptables, "firewall rules left behind");
        assert_eq!(self.sysctls, after.sysctls, "kernel settings not put back");
        assert_eq!(self.netns, after.netns, "network namespaces left behind");
        let leftovers = Command::new("pgrep")
            .args(["-f", "containerd|kubelet|kube-proxy|coredns"])
            .output()
            .unwrap();
        assert!(
            leftovers.stdout.is_empty(),
            "processes left behind: {}",
            String::from_utf8_lossy(&leftovers.stdout)
        );
    }
}

/// A built-in chain's declaration with the default policy, as `iptables-save` lists it.
fn is_builtin_accepting(line: &str) -> bool {
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
        .iter()
        .any(|chain| line == format!(":{chain} ACCEPT"))
}

fn assets() -> PathBuf {
    PathBuf::from(
        std::env::var_os("AUTOTUNER_ASSETS").expect("AUTOTUNER_ASSETS (scripts/fetch-assets prints it)"),
    )
}

/// A plain HTTP/1.1 GET; `None` when nothing answers yet.
fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: capture\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// The sum of a counter's series in a Prometheus text exposition.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
