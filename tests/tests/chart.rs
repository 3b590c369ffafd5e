//! The Helm chart, with the pinned helm, against control planes of its own (helm installs CRDs
//! only when they are absent, so it must not share an API server where the CRD already exists).

use autotuner_api::CameraTuning;
use autotuner_tests::{ControlPlane, Options, established, expect_success, helm, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use std::path::PathBuf;

/// The chart as released before this one: 0.1.0, whose objects all had fixed names
/// (`helm package` of charts/edge-autotuner at commit 727e7c3).
const PREVIOUS_CHART: &str = "tests/fixtures/charts/edge-autotuner-0.1.0.tgz";

fn chart() -> PathBuf {
    repo_root().join("charts/edge-autotuner")
}

/// `helm template` with no cluster (helm's own state in a temporary directory).
fn template(args: &[&str]) -> std::process::Output {
    let helm_home = tempfile::tempdir().unwrap();
    let helm = autotuner_tests::binaries(&["helm"]).unwrap().join("helm");
    std::process::Command::new(helm)
        .args(["template", "autotuner", "--kube-version", "v1.37.2"])
        .arg(chart())
        .args(args)
        .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
        .env("HELM_DATA_HOME", helm_home.path().join("data"))
        .output()
        .unwrap()
}

/// The objects of a rendered chart of one type.
fn objects<T: serde::de::DeserializeOwned>(rendered: &str) -> Vec<T> {
    serde_yaml_ng::Deserializer::from_str(rendered)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|doc: serde_json::Value| serde_json::from_value::<T>(doc).ok())
        .collect()
}

#[tokio::test]
async fn chart_lints_installs_the_crd_and_renders_objects_the_server_accepts() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let plane = ControlPlane::start(Options::default()).await.unwrap();

    expect_success(helm(&plane, &["lint", "--strict", chart]).unwrap(), "helm lint").unwrap();
    let client = plane.client().await.unwrap();
    let server_version = client.apiserver_version().await.unwrap().git_version;

    // The chart's CRD is the generated one (a link to crds/, so the two cannot drift).
    let rendered = expect_success(
        helm(
            &plane,
            &[
                "template",
                "autotuner",
                chart,
                "--include-crds",
                // The `helm test` pod is made by `helm test` only (the end-to-end test runs it).
                "--skip-tests",
                "--kube-version",
                &server_version,
            ],
        )
        .unwrap(),
        "helm template",
    )
    .unwrap();
    assert!(
        rendered.contains(
            &autotuner_api::crd_yaml()
                .lines()
                .skip(1)
                .collect::<Vec<_>>()
                .join("\n")
        )
    );
    expect_success(
        plane
            .kubectl_stdin(["apply", "--dry-run=server", "-f", "-"], &rendered)
            .unwrap(),
        "server-side dry run of the rendered chart",
    )
    .unwrap();

    expect_success(
        helm(
            &plane,
            &[
                "install",
                "autotuner",
                chart,
                "--namespace",
                "autotuner-system",
                "--create-namespace",
            ],
        )
        .unwrap(),
        "helm install",
    )
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    established(&client, "cameratunings.autotuner.io").await.unwrap();
    // The installed API serves the typed resource.
    let tunings: Api<CameraTuning> = Api::namespaced(client.clone(), "autotuner-system");
    assert!(tunings.list(&Default::default()).await.unwrap().items.is_empty());
    // The operator runs as its own ServiceAccount, bound to the generated ClusterRole, all
    // named after the release; so is its Lease.
    const NAME: &str = "autotuner-edge-autotuner";
    let deployments = Api::<Deployment>::namespaced(client.clone(), "autotuner-system");
    let deployment = deployments.get(NAME).await.unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&format!("--lease-name={NAME}")), "{args:?}");
    let role = Api::<ClusterRole>::all(client.clone()).get(NAME).await.unwrap();
    assert_eq!(
        role.rules.unwrap().len(),
        autotuner_operator::rbac::CLUSTER_RULES.len()
    );
    // Two replicas: a drain takes one at a time. The NetworkPolicy selects the operator's pods.
    let budget = Api::<PodDisruptionBudget>::namespaced(client.clone(), "autotuner-system")
        .get(NAME)
        .await
        .unwrap();
    let selects = |selector: &std::collections::BTreeMap<String, String>| {
        let labels = deployment
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let budget = budget.spec.unwrap();
    assert!(selects(budget.selector.unwrap().match_labels.as_ref().unwrap()));
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), "autotuner-system")
        .get(NAME)
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(selects(
        policy.pod_selector.unwrap().match_labels.as_ref().unwrap()
    ));
    assert_eq!(
        policy.policy_types.unwrap(),
        ["Ingress", "Egress"],
        "both directions are closed but for the rules"
    );

    // A second release in the same namespace: nothing collides, not even the cluster-scoped
    // RBAC, and neither selects the other's pods.
    expect_success(
        helm(
            &plane,
            &["install", "cams", chart, "--namespace", "autotuner-system"],
        )
        .unwrap(),
        "a second helm install",
    )
    .unwrap();
    let second = deployments.get("cams-edge-autotuner").await.unwrap();
    let second_selector = second.spec.selector.match_labels.unwrap();
    assert!(!selects(&second_selector));
    assert!(
        Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt("cams-edge-autotuner")
            .await
            .unwrap()
            .is_some()
    );

    for release in ["autotuner", "cams"] {
        expect_success(
            helm(&plane, &["uninstall", release, "--namespace", "autotuner-system"]).unwrap(),
            "helm uninstall",
        )
        .unwrap();
    }
    // Helm leaves CRDs (and so every CameraTuning) in place on uninstall, by design.
    assert!(
        crds.get_opt("cameratunings.autotuner.io")
            .await
            .unwrap()
            .is_some()
    );
}

/// With everything a monitored production install turns on (ServiceMonitor, PodMonitor,
/// PrometheusRule, dashboards, NetworkPolicies), the chart installs on a real API server that has
/// the Prometheus Operator's own CRDs, whose schemas then validate every monitoring object.
#[tokio::test]
async fn with_monitoring_on_the_chart_installs_against_the_prometheus_operators_crds() {
    let plane = ControlPlane::start(Options::default()).await.unwrap();
    let crds = autotuner_tests::prometheus_operator_crds().unwrap();
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{kind}.yaml"));
        expect_success(
            plane
                .kubectl(["apply", "--server-side", "-f", file.to_str().unwrap()])
                .unwrap(),
            &format!("the Prometheus Operator's {kind} CRD"),
        )
        .unwrap();
    }
    let client = plane.client().await.unwrap();
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        established(&client, &format!("{kind}.monitoring.coreos.com"))
            .await
            .unwrap();
    }
    let chart = chart();
    expect_success(
        helm(
            &plane,
            &[
                "install",
                "autotuner",
                chart.to_str().unwrap(),
                "--namespace",
                "autotuner-system",
                "--create-namespace",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "podMonitor.enabled=true",
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                "grafanaDashboards.enabled=true",
            ],
        )
        .unwrap(),
        "helm install with monitoring on",
    )
    .unwrap();
    let installed = expect_success(
        plane
            .kubectl([
                "-n",
                "autotuner-system",
                "get",
                "servicemonitors,podmonitors,prometheusrules,configmaps,networkpolicies",
                "-o",
                "name",
            ])
            .unwrap(),
        "kubectl get",
    )
    .unwrap();
    for object in [
        "servicemonitor.monitoring.coreos.com/autotuner-edge-autotuner",
        "podmonitor.monitoring.coreos.com/autotuner-edge-autotuner-workers",
        "prometheusrule.monitoring.coreos.com/autotuner-edge-autotuner",
        "configmap/autotuner-edge-autotuner-dashboard-fleet",
        "configmap/autotuner-edge-autotuner-dashboard-camera",
        "networkpolicy.networking.k8s.io/autotuner-edge-autotuner",
    ] {
        assert!(
            installed.lines().any(|l| l == object),
            "{object} not installed:\n{installed}"
        );
    }
    // The operator is told to give each annotator its NetworkPolicy.
    let deployment = Api::<Deployment>::namespaced(client, "autotuner-system")
        .get("autotuner-edge-autotuner")
        .await
        .unwrap();
    let args = deployment.spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let peers = args
        .iter()
        .find_map(|a| a.strip_prefix("--annotator-ingress-from="))
        .expect("--annotator-ingress-from");
    let peers: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer> =
        serde_json::from_str(peers).unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    plane.stop();
}

/// `helm install` on a cluster where the images were loaded from `scripts/images`' archives (kind
/// load, k3s ctr import) finds them: the chart names exactly the references the archives carry,
/// with a pull policy that uses a loaded image rather than pulling.
#[test]
fn the_chart_names_exactly_the_images_scripts_images_builds() {
    use autotuner_api::contract;
    let rendered = expect_success(template(&[]), "helm template").unwrap();
    let operator = objects::<Deployment>(&rendered)
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("autotuner-edge-autotuner"))
        .expect("the operator's Deployment");
    let pod = operator.spec.template.spec.expect("a pod spec");
    let container = &pod.containers[0];
    let worker_image = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == contract::ENV_WORKER_IMAGE)
        .and_then(|e| e.value.clone())
        .expect("the worker image the operator puts in its pods");
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));

    let images = autotuner_tests::images().unwrap();
    let built = |archive: &str| {
        let index = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(images.join(archive))
            .arg("index.json")
            .output()
            .unwrap();
        let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
        index["manifests"][0]["annotations"]["io.containerd.image.name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        container.image.as_deref(),
        Some(built("operator.oci.tar").as_str())
    );
    assert_eq!(worker_image, built("workers.oci.tar"));
}

/// An upgrade from the previous release, with a CameraTuning in place: the CRD and the
/// CameraTuning survive (the same object, spec untouched), and the operator's objects move to
/// the release-derived names, the fixed names of 0.1.0 removed.
#[tokio::test]
async fn an_upgrade_from_the_previous_chart_keeps_the_crd_and_every_cameratuning() {
    let plane = ControlPlane::start(Options::default()).await.unwrap();
    let client = plane.client().await.unwrap();
    let previous = repo_root().join(PREVIOUS_CHART);
    let ns = ["--namespace", "autotuner-system"];
    let install = [
        &[
            "install",
            "autotuner",
            previous.to_str().unwrap(),
            "--create-namespace",
        ][..],
        &ns[..],
    ]
    .concat();
    expect_success(helm(&plane, &install).unwrap(), "helm install of 0.1.0").unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    established(&client, "cameratunings.autotuner.io").await.unwrap();
    expect_success(
        plane.kubectl(["create", "namespace", "cams"]).unwrap(),
        "namespace",
    )
    .unwrap();
    let example = repo_root().join("manifests/examples/minimal.yaml");
    expect_success(
        plane
            .kubectl(["apply", "-n", "cams", "-f", example.to_str().unwrap()])
            .unwrap(),
        "kubectl apply of the minimal example",
    )
    .unwrap();
    let tunings: Api<CameraTuning> = Api::namespaced(client.clone(), "cams");
    let before = tunings.get("entrance").await.unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), "autotuner-system");
    assert!(deployments.get_opt("autotuner-operator").await.unwrap().is_some());

    let chart = chart();
    let upgrade = [&["upgrade", "autotuner", chart.to_str().unwrap()][..], &ns[..]].concat();
    expect_success(helm(&plane, &upgrade).unwrap(), "helm upgrade to this chart").unwrap();

    let after = tunings.get("entrance").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(
        serde_json::to_value(&after.spec).unwrap(),
        serde_json::to_value(&before.spec).unwrap()
    );
    assert!(
        crds.get_opt("cameratunings.autotuner.io")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        deployments
            .get_opt("autotuner-edge-autotuner")
            .await
            .unwrap()
            .is_some()
    );
    assert!(deployments.get_opt("autotuner-operator").await.unwrap().is_none());
    let bindings = Api::<ClusterRoleBinding>::all(client.clone());
    assert!(
        bindings
            .get_opt("autotuner-edge-autotuner")
            .await
            .unwrap()
            .is_some()
    );
    assert!(bindings.get_opt("autotuner-operator").await.unwrap().is_none());
    let history = expect_success(
        helm(
            &plane,
            &[&["history", "autotuner", "-o", "json"][..], &ns[..]].concat(),
        )
        .unwrap(),
        "helm history",
    )
    .unwrap();
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let charts: Vec<_> = history
        .iter()
        .map(|r| r["chart"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(charts, ["edge-autotuner-0.1.0", "edge-autotuner-0.2.0"]);
    assert_eq!(history[1]["status"], "deployed");
}

/// `values.schema.json` refuses what it does not know and what has the wrong type, with a
/// message that names the value; every value of values.yaml is described there and in the
/// chart's README.
#[test]
fn every_value_is_typed_described_and_documented_and_a_bad_one_is_refused() {
    for (set, names) in [
        ("replicas=0", "replicas"),
        ("replicaCount=2", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("networkPolicy.apiServer.ports[0]=70000", "ports"),
        ("serviceMonitor.interval=soon", "interval"),
    ] {
        let output = template(&["--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{set} was accepted");
        assert!(stderr.contains(names), "{set}: {stderr}");
    }
    expect_success(template(&["--set", "replicas=1"]), "one replica").unwrap();
    // With one replica there is nothing for a budget to keep.
    let single = expect_success(template(&["--set", "replicas=1"]), "one replica").unwrap();
    assert!(objects::<PodDisruptionBudget>(&single).is_empty());
    let defaults = expect_success(template(&[]), "defaults").unwrap();
    assert_eq!(objects::<PodDisruptionBudget>(&defaults).len(), 1);
    let closed = expect_success(template(&["--set", "networkPolicy.enabled=false"]), "no policy").unwrap();
    assert!(objects::<NetworkPolicy>(&closed).is_empty());

    let dir = chart();
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap()).unwrap();
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut leaves = Vec::new();
    leaf_paths(&values, &schema, String::new(), &mut leaves);
    assert!(leaves.len() >= 20, "{leaves:?}");
    for (path, described) in leaves {
        assert!(described, "{path} has no description in values.schema.json");
        assert!(
            readme.contains(&format!("| `{path}` |")),
            "{path} is not in the chart's README"
        );
    }
}

/// Each value's dotted path, and whether the schema describes it. A closed group of values
/// (`additionalProperties: false`) is walked into; an open map such as `resources` or
/// `nodeSelector` is one value.
fn leaf_paths(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: String,
    out: &mut Vec<(String, bool)>,
) {
    let closed = schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false));
    let properties = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .filter(|_| closed);
    match (value.as_object(), properties) {
        (Some(map), Some(properties)) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match properties.get(key) {
                    Some(child_schema) => leaf_paths(child, child_schema, child_path, out),
                    None => out.push((child_path, false)),
                }
            }
        }
        _ => out.push((
            path,
            schema
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.is_empty()),
        )),
    }
}

/// manifests/operator (for `kubectl apply -k` and GitOps) is the chart rendered, not a second
/// copy: `scripts/manifests --check` renders it again and compares.
#[test]
fn the_plain_manifests_are_the_chart_rendered() {
    let bin = autotuner_tests::binaries(&["helm"]).unwrap();
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/manifests"))
        .arg("--check")
        .env("AUTOTUNER_CONTROLPLANE_BIN", bin)
        .output()
        .unwrap();
    expect_success(output, "scripts/manifests --check").unwrap();
}

/// `prometheusRule.enabled` ships `rules/alerts.yaml` as it is (the file promtool tests), with
/// the labels a Prometheus selects rules by; off by default.
#[test]
fn the_prometheus_rule_is_the_tested_rules_file() {
    let rendered = template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.labels.release=monitoring",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rule: serde_json::Value = serde_yaml_ng::from_slice(&rendered.stdout).unwrap();
    let file: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("rules/alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    assert_eq!(rule["metadata"]["labels"]["release"], "monitoring");

    let default = template(&[]);
    assert!(default.status.success());
    assert!(!String::from_utf8_lossy(&default.stdout).contains("kind: PrometheusRule"));
}

/// `grafanaDashboards.enabled` ships each of `dashboards/*.json` (what `dashboards/gen` writes)
/// verbatim in a ConfigMap with the label Grafana's sidecar watches for; off by default.
#[test]
fn the_dashboard_config_maps_hold_the_generated_dashboards() {
    let rendered = template(&[
        "--set",
        "grafanaDashboards.enabled=true",
        "--set",
        "grafanaDashboards.annotations.grafana_folder=Cameras",
        "--show-only",
        "templates/dashboards.yaml",
    ]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let maps = objects::<ConfigMap>(&String::from_utf8_lossy(&rendered.stdout));
    let mut shipped: Vec<String> = Vec::new();
    for map in &maps {
        let labels = map.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["grafana_dashboard"], "1");
        assert_eq!(
            map.metadata.annotations.as_ref().unwrap()["grafana_folder"],
            "Cameras"
        );
        for (file, text) in map.data.as_ref().unwrap() {
            let committed = std::fs::read_to_string(chart().join("dashboards").join(file)).unwrap();
            assert_eq!(
                text.trim_end(),
                committed.trim_end(),
                "{file} is not shipped verbatim"
            );
            let dashboard: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(dashboard["uid"].as_str().unwrap().starts_with("edge-autotuner-"));
            shipped.push(file.clone());
        }
    }
    shipped.sort();
    assert_eq!(shipped, ["camera.json", "fleet.json"]);

    let default = template(&[]);
    assert!(default.status.success());
    assert!(!String::from_utf8_lossy(&default.stdout).contains("grafana_dashboard"));
}

/// The labels the dashboards and alerts select by: the operator's ServiceMonitor keeps the
/// `namespace` its per-CameraTuning gauges carry, and the workers' PodMonitor labels their series
/// with the pod's CameraTuning.
#[test]
fn the_monitors_label_series_as_the_dashboards_select_them() {
    let rendered = template(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "podMonitor.labels.release=monitoring",
    ]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let docs: Vec<serde_json::Value> = objects(&String::from_utf8_lossy(&rendered.stdout));
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let service_monitor = of_kind("ServiceMonitor");
    assert_eq!(service_monitor["spec"]["endpoints"][0]["honorLabels"], true);
    let pod_monitor = of_kind("PodMonitor");
    assert_eq!(pod_monitor["metadata"]["labels"]["release"], "monitoring");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        pod_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        autotuner_operator::children::labels::MANAGER
    );
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http");
    let relabelled: Vec<(&str, &str)> = endpoint["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["sourceLabels"][0].as_str().unwrap(),
                r["targetLabel"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(relabelled.contains(&(
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
        "cameratuning"
    )));
}
