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
