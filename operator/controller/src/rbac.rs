//! The operator's permissions, as data: the generated RBAC manifests come from here, and the
//! integration tests run the operator under exactly these rules, so a missing one fails a test
//! and an unused one is visible in one place.

/// One PolicyRule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Cluster-wide: CameraTunings live in any namespace, and so do their children. Children are
/// written by server-side apply, which needs `create` for an object that does not exist yet and
/// `patch` for one that does.
pub const CLUSTER_RULES: &[Rule] = &[
    // Watch CameraTunings; patch adds and removes the cleanup finalizer.
    Rule {
        api_groups: &["autotuner.io"],
        resources: &["cameratunings"],
        verbs: &["get", "list", "watch", "patch"],
    },
    // Server-side apply of the status. `get` also lets the operator grant its workers `get`.
    Rule {
        api_groups: &["autotuner.io"],
        resources: &["cameratunings/status"],
        verbs: &["get", "patch"],
    },
    // Capture and annotator Deployments: cached (list, watch), applied (patch), unused annotators deleted.
    Rule {
        api_groups: &["apps"],
        resources: &["deployments"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    // Training Jobs: cached, applied, failed ones deleted before a retry.
    Rule {
        api_groups: &["batch"],
        resources: &["jobs"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    // The workers' identity and the dataset claim: applied only (garbage collection deletes them).
    Rule {
        api_groups: &[""],
        resources: &["serviceaccounts", "persistentvolumeclaims"],
        verbs: &["create", "patch"],
    },
    // The annotator's Service: applied, and deleted with its Deployment.
    Rule {
        api_groups: &[""],
        resources: &["services"],
        verbs: &["create", "patch", "delete"],
    },
    // The annotator's NetworkPolicy: applied, and deleted with its Deployment.
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: &["create", "patch", "delete"],
    },
    // Each worker's Role (its own CameraTuning only) and binding.
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "rolebindings"],
        verbs: &["create", "patch"],
    },
    // Events on CameraTunings (the recorder creates, then patches a series).
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// In the operator's own namespace: the leader-election Lease.
pub const NAMESPACE_RULES: &[Rule] = &[Rule {
    api_groups: &["coordination.k8s.io"],
    resources: &["leases"],
    verbs: &["get", "create", "patch"],
}];

/// Name of the ClusterRole, Role, their bindings, the ServiceAccount and the Lease in the plain
/// manifests (the chart derives its names from the release, so that two releases never collide).
pub const NAME: &str = "autotuner-operator";

fn rules_yaml(rules: &[Rule]) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rules
        .iter()
        .map(|r| {
            format!(
                "  - apiGroups: [{}]\n    resources: [{}]\n    verbs: [{}]\n",
                list(r.api_groups),
                list(r.resources),
                list(r.verbs)
            )
        })
        .collect()
}

/// ServiceAccount, ClusterRole + binding and the Lease Role + binding, all called `name`, for
/// `namespace` (each a plain value, or a Helm expression for the chart).
pub fn manifest(name: &str, namespace: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata:
  name: {name}
  namespace: {namespace}
  labels:
{labels}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {name}
  labels:
{labels}
rules:
{cluster}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {name}
  labels:
{labels}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {name}
subjects:
  - kind: ServiceAccount
    name: {name}
    namespace: {namespace}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {name}
  namespace: {namespace}
  labels:
{labels}
rules:
{local}---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {name}
  namespace: {namespace}
  labels:
{labels}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {name}
subjects:
  - kind: ServiceAccount
    name: {name}
    namespace: {namespace}
",
        cluster = rules_yaml(CLUSTER_RULES),
        local = rules_yaml(NAMESPACE_RULES),
    )
}

/// The generated files: (path from the repository root, content).
pub fn generated_files() -> Vec<(&'static str, String)> {
    let header = "# Generated by `cargo run -p autotuner-operator --bin manifestgen` from operator/controller/src/rbac.rs; do not edit.\n";
    vec![
        (
            "manifests/operator/rbac.yaml",
            format!(
                "{header}{}",
                manifest(
                    NAME,
                    "autotuner-system",
                    "    app.kubernetes.io/name: edge-autotuner"
                )
            ),
        ),
        (
            "charts/edge-autotuner/templates/rbac.yaml",
            format!(
                "{header}{}",
                manifest(
                    "{{ include \"edge-autotuner.fullname\" . }}",
                    "{{ .Release.Namespace }}",
                    "    {{- include \"edge-autotuner.labels\" . | nindent 4 }}"
                )
            ),
        ),
    ]
}
