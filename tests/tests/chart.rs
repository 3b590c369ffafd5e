//! The Helm chart, with the pinned helm, against a control plane of its own (helm installs CRDs
//! only when they are absent, so it must not share an API server where the CRD already exists).

use autotuner_api::CameraTuning;
use autotuner_tests::{ControlPlane, Options, expect_success, helm, repo_root, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use std::time::Duration;

#[tokio::test]
async fn chart_lints_installs_the_crd_and_renders_objects_the_server_accepts() {
    let chart = repo_root().join("charts/edge-autotuner");
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
    wait_for(Duration::from_secs(30), || async {
        let crd = crds.get("cameratunings.autotuner.io").await.ok()?;
        crd.status?
            .conditions?
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await
    .unwrap();
    // The installed API serves the typed resource.
    let tunings: Api<CameraTuning> = Api::namespaced(client.clone(), "autotuner-system");
    assert!(tunings.list(&Default::default()).await.unwrap().items.is_empty());
    // The operator runs as its own ServiceAccount, bound to the generated ClusterRole.
    let deployment = Api::<Deployment>::namespaced(client.clone(), "autotuner-system")
        .get("autotuner-operator")
        .await
        .unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("autotuner-operator"));
    let role = Api::<ClusterRole>::all(client)
        .get("autotuner-operator")
        .await
        .unwrap();
    assert_eq!(
        role.rules.unwrap().len(),
        autotuner_operator::rbac::CLUSTER_RULES.len()
    );

    expect_success(
        helm(
            &plane,
            &["uninstall", "autotuner", "--namespace", "autotuner-system"],
        )
        .unwrap(),
        "helm uninstall",
    )
    .unwrap();
    // Helm leaves CRDs (and so every CameraTuning) in place on uninstall, by design.
    assert!(
        crds.get_opt("cameratunings.autotuner.io")
            .await
            .unwrap()
            .is_some()
    );
}

/// `helm install` on a cluster where the images were loaded from `scripts/images`' archives (kind
/// load, k3s ctr import) finds them: the chart names exactly the references the archives carry,
/// with a pull policy that uses a loaded image rather than pulling.
#[test]
fn the_chart_names_exactly_the_images_scripts_images_builds() {
    use autotuner_api::contract;
    let chart = repo_root().join("charts/edge-autotuner");
    let helm_home = tempfile::tempdir().unwrap();
    let helm = autotuner_tests::binaries(&["helm"]).unwrap().join("helm");
    let rendered = std::process::Command::new(helm)
        .args(["template", "autotuner", "--kube-version", "v1.37.2"])
        .arg(&chart)
        .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
        .env("HELM_DATA_HOME", helm_home.path().join("data"))
        .output()
        .unwrap();
    let rendered = expect_success(rendered, "helm template").unwrap();
    let operator = serde_yaml_ng::Deserializer::from_str(&rendered)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|doc: serde_json::Value| serde_json::from_value::<Deployment>(doc).ok())
        .find(|d| d.metadata.name.as_deref() == Some("autotuner-operator"))
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
