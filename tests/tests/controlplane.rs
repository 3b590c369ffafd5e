//! The test control plane itself: the controllers make Pods and the scheduler binds them to the
//! Nodes the tests create (what the operator's tests rely on), and teardown leaves nothing behind.

use std::net::TcpStream;
use std::time::Duration;

use autotuner_tests::{ControlPlane, Options, ready_node, shared, test_namespace, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn deployments_make_pods_that_the_scheduler_binds_to_matching_nodes() {
    let plane = shared(Options {
        controllers: true,
        node: false,
    })
    .await;
    let client = plane.client().await.unwrap();
    let ns = test_namespace(&client, "scheduling").await.unwrap();
    ready_node(
        &client,
        "camera-node",
        json!({ "autotuner.io/camera": "entrance" }),
        0,
    )
    .await
    .unwrap();
    ready_node(
        &client,
        "gpu-node",
        json!({ "nvidia.com/gpu.present": "true" }),
        1,
    )
    .await
    .unwrap();

    // One pod that must land on the GPU node (it asks for a GPU), one on the camera node (by label).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for (name, selector, limits) in [
        ("annotator", json!({}), json!({ "nvidia.com/gpu": "1" })),
        ("capture", json!({ "autotuner.io/camera": "entrance" }), json!({})),
    ] {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": {
                        "nodeSelector": selector,
                        "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
                        "containers": [{ "name": name, "image": "example.invalid/none:1", "resources": { "limits": limits } }]
                    }
                }
            }
        }))
        .unwrap();
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (app, node) in [("annotator", "gpu-node"), ("capture", "camera-node")] {
        let bound = wait_for(Duration::from_secs(60), || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            list.items.into_iter().find_map(|p| p.spec?.node_name)
        })
        .await
        .unwrap_or_else(|e| panic!("{app} pod not scheduled: {e}"));
        assert_eq!(bound, node, "{app}");
    }

    // Garbage collection follows owner references: deleting the Deployment deletes its ReplicaSet
    // and that its Pods (which, bound to a Node without a kubelet to confirm, stay Terminating).
    deployments
        .delete("capture", &DeleteParams::background())
        .await
        .unwrap();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(60), || async {
        let sets = replica_sets
            .list(&ListParams::default().labels("app=capture"))
            .await
            .ok()?;
        let pods = pods
            .list(&ListParams::default().labels("app=capture"))
            .await
            .ok()?;
        (sets.items.is_empty() && pods.items.iter().all(|p| p.metadata.deletion_timestamp.is_some()))
            .then_some(())
    })
    .await
    .expect("the dependents of a deleted Deployment are collected");
}

#[tokio::test]
async fn control_planes_are_isolated_and_stop_leaves_nothing_behind() {
    let (a, b) = tokio::join!(
        ControlPlane::start(Options::default()),
        ControlPlane::start(Options::default())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.server(), b.server());

    let ns = test_namespace(&a.client().await.unwrap(), "isolated")
        .await
        .unwrap();
    let in_b: Api<Namespace> = Api::all(b.client().await.unwrap());
    assert!(in_b.get_opt(&ns).await.unwrap().is_none());

    let (dir, server) = (a.dir().to_path_buf(), a.server().to_string());
    let port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    a.stop();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API server still listens"
    );
    // The other one is unaffected.
    assert!(in_b.get_opt("default").await.unwrap().is_some());
}
