//! The objects one CameraTuning wants to exist: pure builders, no client.
//!
//! Every pod passes the "restricted" Pod Security Standard (non-root, read-only root filesystem,
//! no privilege escalation, all capabilities dropped, RuntimeDefault seccomp). Credentials reach
//! pods only as Secret references; nothing secret is ever copied into an object the operator
//! writes.

use std::collections::BTreeMap;

use autotuner_api::contract::{
    self, ANNOTATOR_PLAIN_PORT, ANNOTATOR_PORT, ANNOTATOR_TLS_MOUNT, DATASET_MOUNT, SPOOL_MOUNT,
    TrainingSettings,
};
use autotuner_api::{CameraTuning, ModelRef, TeacherSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::Config;

/// Label keys and values shared by every child.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// The teacher an annotator serves (a hash of its spec), shared across CameraTunings.
    pub const TEACHER: &str = "autotuner.io/teacher";
    /// The training iteration a Job runs.
    pub const ITERATION: &str = "autotuner.io/iteration";
    pub const APP: &str = "edge-autotuner";
    pub const MANAGER: &str = "autotuner-operator";
    /// Selects every object the operator manages.
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=autotuner-operator";
}

/// Annotation keys the operator sets.
pub mod annotations {
    /// On the capture pod template: a hash of the spec the worker read, so an edit rolls the pod.
    pub const CAPTURE_SETTINGS: &str = "autotuner.io/capture-settings";
}

/// Deterministic child names: a restarted operator finds what it made instead of duplicating it.
pub mod names {
    pub fn capture(tuning: &str) -> String {
        format!("{tuning}-capture")
    }
    pub fn worker(tuning: &str) -> String {
        format!("{tuning}-worker")
    }
    pub fn dataset_claim(tuning: &str) -> String {
        format!("{tuning}-dataset")
    }
    pub fn spool_claim(tuning: &str) -> String {
        format!("{tuning}-spool")
    }
    pub fn training_job(tuning: &str, iteration: u32) -> String {
        format!("{tuning}-train-{iteration}")
    }
    pub fn annotator(teacher_hash: &str) -> String {
        format!("annotator-{teacher_hash}")
    }
}

/// Requests and limits of a worker whose spec sets none (`spec.camera.resources`,
/// `spec.annotation.teacher.resources`, `spec.training.resources`): the requests place it (small
/// enough that a camera's three workers fit a 2-core node beside the operator: the capture
/// worker uses 0.3-0.6 of a core at 25 fps, bench-results/edge-cpu.json); the
/// memory limit leaves room over the peaks measured in the tuning-loop test (capture 403 MiB at
/// 768x576 with one inference thread; the trainer 1.5 GiB training every layer at batch 8, so
/// about 3 GiB at the default 16); no CPU limit, since a throttled decoder drops frames and a
/// throttled trainer only runs longer.
pub mod default_resources {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn of(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
        let quantity = |q: &str| Quantity(q.into());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity(cpu)),
                ("memory".into(), quantity(memory)),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity(memory_limit))])),
            ..ResourceRequirements::default()
        }
    }

    pub fn capture() -> ResourceRequirements {
        of("250m", "256Mi", "1Gi")
    }

    pub fn annotator() -> ResourceRequirements {
        of("500m", "512Mi", "2Gi")
    }

    pub fn trainer() -> ResourceRequirements {
        of("500m", "1Gi", "6Gi")
    }
}

/// Health checks of the workers that serve HTTP (the trainer, a Job, serves none).
mod probes {
    use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn get(path: &str, period_seconds: i32, failure_threshold: i32) -> Option<Probe> {
        Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period_seconds),
            failure_threshold: Some(failure_threshold),
            ..Probe::default()
        })
    }

    /// Liveness is held back until the worker first answers: the annotator answers only once it
    /// has fetched and loaded its model (a large teacher over HTTP or S3), so allow 5 minutes.
    pub fn startup(path: &str) -> Option<Probe> {
        get(path, 5, 60)
    }

    /// Three missed answers, 30 s: the process is stuck and restarting it is the fix.
    pub fn liveness(path: &str) -> Option<Probe> {
        get(path, 10, 3)
    }

    pub fn readiness(path: &str) -> Option<Probe> {
        get(path, 5, 1)
    }
}

/// The teacher's identity for sharing: CameraTunings of a namespace whose teacher specs are
/// equal share one annotator. FNV-1a over the canonical JSON, so it is stable across releases.
pub fn teacher_hash(teacher: &TeacherSpec) -> String {
    format!(
        "{:012x}",
        fnv1a(&serde_json::to_vec(teacher).expect("a spec always serializes")) >> 16
    )
}

/// A short stable hash of a desired object, to skip applies that would change nothing.
pub fn object_hash(object: &impl serde::Serialize) -> String {
    format!(
        "{:016x}",
        fnv1a(&serde_json::to_vec(object).expect("objects always serialize"))
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An annotator Deployment, its Service and, where the operator is configured for it, the
/// NetworkPolicy that admits only the capture pods of its namespace and its metrics scraper.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotator {
    pub teacher_hash: String,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: Option<NetworkPolicy>,
}

/// Everything one CameraTuning wants, at one moment of its loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub dataset_claim: Option<PersistentVolumeClaim>,
    /// In S3 mode, the capture worker's spool: frames not yet labelled outlive the pod.
    pub spool_claim: Option<PersistentVolumeClaim>,
    pub capture: Deployment,
    /// `None` when the spec names an existing endpoint.
    pub annotator: Option<Annotator>,
    /// The Job of the iteration that should be running, if any.
    pub training_job: Option<Job>,
}

/// What the builders need besides the spec: decided by the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout<'a> {
    /// The student the edge runs now (the tuned one, or the off-the-shelf one).
    pub deployed_model_uri: &'a str,
    /// Start a training Job for this iteration.
    pub train_iteration: Option<u32>,
    /// When the round the Job trains on began (`status.dataset.roundStartedAt`).
    pub round_started_at: Option<&'a Time>,
}

pub fn build(tuning: &CameraTuning, rollout: &Rollout<'_>, config: &Config) -> Children {
    let name = tuning.name_any();
    let owner = tuning
        .controller_owner_ref(&())
        .expect("a stored CameraTuning has a name and uid");
    let dataset = Dataset::of(tuning);
    Children {
        service_account: worker_service_account(&name, &owner),
        role: worker_role(&name, &owner),
        role_binding: worker_role_binding(&name, &owner),
        dataset_claim: dataset_claim(tuning, &owner),
        spool_claim: dataset.claim.is_none().then(|| spool_claim(tuning, &owner)),
        capture: capture(tuning, &owner, &dataset, config),
        annotator: tuning
            .spec
            .annotation
            .teacher
            .as_ref()
            .map(|teacher| annotator(teacher, config)),
        training_job: rollout
            .train_iteration
            .map(|iteration| training_job(tuning, &owner, &dataset, iteration, rollout, config)),
    }
}

fn metadata(
    name: &str,
    component: &str,
    instance: Option<&str>,
    owner: Option<&OwnerReference>,
) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (labels::NAME.to_string(), labels::APP.to_string()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
    ]);
    if let Some(instance) = instance {
        labels.insert(labels::INSTANCE.to_string(), instance.to_string());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    }
}

/// The label `key` set to `value` in `meta`.
fn with_label(mut meta: ObjectMeta, key: &str, value: &str) -> ObjectMeta {
    meta.labels
        .get_or_insert_default()
        .insert(key.to_string(), value.to_string());
    meta
}

/// The user and group every pod runs as (the distroless images' `nonroot`).
const NON_ROOT: i64 = 65532;

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The restricted Pod Security profile, for the pod and for each container.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT),
        run_as_group: Some(NON_ROOT),
        fs_group: Some(NON_ROOT),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Where the dataset is kept, as the pods see it.
struct Dataset {
    uri: String,
    /// The claim to mount at [`DATASET_MOUNT`], when on a volume.
    claim: Option<String>,
    env: Vec<EnvVar>,
}

impl Dataset {
    fn of(tuning: &CameraTuning) -> Self {
        let name = tuning.name_any();
        let storage = &tuning.spec.dataset.storage;
        if let Some(s3) = &storage.s3 {
            let prefix = s3
                .prefix
                .clone()
                .unwrap_or_else(|| format!("{}/{name}", tuning.namespace().unwrap_or_default()));
            let mut vars = vec![
                secret_env(
                    contract::ENV_AWS_ACCESS_KEY_ID,
                    &s3.credentials_secret_ref.name,
                    contract::ENV_AWS_ACCESS_KEY_ID,
                ),
                secret_env(
                    contract::ENV_AWS_SECRET_ACCESS_KEY,
                    &s3.credentials_secret_ref.name,
                    contract::ENV_AWS_SECRET_ACCESS_KEY,
                ),
            ];
            if let Some(endpoint) = &s3.endpoint {
                vars.push(env(contract::ENV_S3_ENDPOINT, endpoint.as_str()));
            }
            if let Some(region) = &s3.region {
                vars.push(env(contract::ENV_S3_REGION, region.as_str()));
            }
            return Self {
                uri: format!("s3://{}/{}", s3.bucket, prefix.trim_matches('/')),
                claim: None,
                env: vars,
            };
        }
        let claim = storage
            .persistent_volume_claim
            .as_ref()
            .and_then(|pvc| pvc.claim_name.clone())
            .unwrap_or_else(|| names::dataset_claim(&name));
        Self {
            uri: DATASET_MOUNT.to_string(),
            claim: Some(claim),
            env: Vec::new(),
        }
    }

    fn volumes(&self) -> Vec<Volume> {
        let mut volumes = vec![tmp_volume()];
        if let Some(claim) = &self.claim {
            volumes.push(Volume {
                name: "dataset".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    ..PersistentVolumeClaimVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        volumes
    }

    fn mounts(&self) -> Vec<VolumeMount> {
        let mut mounts = vec![mount("tmp", "/tmp")];
        if self.claim.is_some() {
            mounts.push(mount("dataset", DATASET_MOUNT));
        }
        mounts
    }
}

fn worker_service_account(name: &str, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(&names::worker(name), "worker", Some(name), Some(owner)),
        ..ServiceAccount::default()
    }
}

/// A worker may read its own CameraTuning and write its own status fields, nothing else. (`list`
/// with a resource name allows only a list by `metadata.name`: what a watch starts with.)
fn worker_role(name: &str, owner: &OwnerReference) -> Role {
    let rule = |resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec!["autotuner.io".into()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(vec![name.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    Role {
        metadata: metadata(&names::worker(name), "worker", Some(name), Some(owner)),
        rules: Some(vec![
            rule("cameratunings", &["get", "list", "watch"]),
            rule("cameratunings/status", &["get", "patch"]),
        ]),
    }
}

fn worker_role_binding(name: &str, owner: &OwnerReference) -> RoleBinding {
    RoleBinding {
        metadata: metadata(&names::worker(name), "worker", Some(name), Some(owner)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: names::worker(name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names::worker(name),
            ..Subject::default()
        }]),
    }
}

/// The claim the operator creates when the spec asks for a size (not when it names a claim).
fn dataset_claim(tuning: &CameraTuning, owner: &OwnerReference) -> Option<PersistentVolumeClaim> {
    let pvc = tuning.spec.dataset.storage.persistent_volume_claim.as_ref()?;
    if pvc.claim_name.is_some() {
        return None;
    }
    let name = tuning.name_any();
    let size = pvc.size.as_ref().map_or("10Gi", |q| q.0.as_str());
    Some(PersistentVolumeClaim {
        metadata: metadata(&names::dataset_claim(&name), "dataset", Some(&name), Some(owner)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size.into()))])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: pvc.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// Size of the spool claim in S3 mode: the capture worker's spool bound (2 GiB by default) and
/// room for the entry being written.
const SPOOL_CLAIM_SIZE: &str = "3Gi";

/// The capture worker's spool in S3 mode (a ReadWriteOnce claim: one capture pod at a time, and
/// the Deployment recreates rather than rolls).
fn spool_claim(tuning: &CameraTuning, owner: &OwnerReference) -> PersistentVolumeClaim {
    let name = tuning.name_any();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::spool_claim(&name)),
            labels: Some(child_labels("spool", &name)),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(SPOOL_CLAIM_SIZE.into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn child_labels(component: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), labels::APP.to_string()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::INSTANCE.to_string(), instance.to_string()),
    ])
}

/// Places `pod` on the camera's node: by name through node affinity (so the scheduler still
/// checks resources and taints, unlike `spec.nodeName`), or by the spec's node selector.
fn place_on_camera_node(pod: &mut PodSpec, tuning: &CameraTuning) {
    let camera = &tuning.spec.camera;
    match (&camera.node_name, &camera.node_selector) {
        (Some(node), _) => {
            let term = NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.clone()]),
                }]),
                ..NodeSelectorTerm::default()
            };
            pod.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![term],
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            });
        }
        (None, Some(selector)) => pod.node_selector = Some(selector.clone()),
        (None, None) => {}
    }
}

/// A hash of the spec the capture worker reads when it starts: everything but `training`, which
/// only the training Jobs use.
pub fn capture_settings_hash(tuning: &CameraTuning) -> String {
    let mut spec = serde_json::to_value(&tuning.spec).expect("a spec serialises");
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("training");
    }
    object_hash(&spec)
}

fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        ..ContainerPort::default()
    }
}

/// A pod template's metadata: `meta`'s labels (and `annotations`).
fn template_metadata(meta: &ObjectMeta, annotations: Option<BTreeMap<String, String>>) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        labels: meta.labels.clone(),
        annotations,
        ..ObjectMeta::default()
    })
}

fn annotator_url(tuning: &CameraTuning) -> String {
    match (&tuning.spec.annotation.teacher, &tuning.spec.annotation.endpoint) {
        (_, Some(endpoint)) => endpoint.url.clone(),
        (Some(teacher), None) => format!(
            "{}://{}:{ANNOTATOR_PORT}",
            if teacher.tls_secret_name.is_some() {
                "https"
            } else {
                "http"
            },
            names::annotator(&teacher_hash(teacher))
        ),
        (None, None) => String::new(),
    }
}

/// The Secret key of the annotator's issuer certificate, which the capture worker trusts alone
/// for it: the teacher's TLS Secret's `ca.crt`, or the endpoint's `caSecretRef`.
fn annotator_ca(tuning: &CameraTuning) -> Option<(String, String)> {
    match (&tuning.spec.annotation.teacher, &tuning.spec.annotation.endpoint) {
        (_, Some(endpoint)) => endpoint
            .ca_secret_ref
            .as_ref()
            .map(|r| (r.name.clone(), r.key.clone())),
        (Some(teacher), None) => teacher
            .tls_secret_name
            .as_ref()
            .map(|name| (name.clone(), "ca.crt".to_string())),
        (None, None) => None,
    }
}

fn worker_env(tuning: &CameraTuning, dataset: &Dataset) -> Vec<EnvVar> {
    let mut vars = vec![
        env(contract::ENV_NAME, tuning.name_any()),
        EnvVar {
            name: contract::ENV_NAMESPACE.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env(contract::ENV_DATASET_URI, dataset.uri.clone()),
    ];
    vars.extend(dataset.env.iter().cloned());
    vars
}

/// The workers log as the operator does (nothing set: text, the workers' default).
fn log_format(config: &Config) -> Vec<EnvVar> {
    if config.log_json {
        vec![env(contract::ENV_LOG_JSON, "true")]
    } else {
        Vec::new()
    }
}

/// A pod running one worker binary as the CameraTuning's worker identity, with the dataset.
fn worker_pod(
    tuning: &CameraTuning,
    worker: &str,
    vars: Vec<EnvVar>,
    resources: ResourceRequirements,
    dataset: &Dataset,
    config: &Config,
) -> PodSpec {
    PodSpec {
        service_account_name: Some(names::worker(&tuning.name_any())),
        security_context: Some(pod_security_context()),
        containers: vec![Container {
            name: worker.into(),
            image: Some(config.worker_image.clone()),
            args: Some(vec![worker.into()]),
            env: Some([vars, log_format(config)].concat()),
            resources: Some(resources),
            security_context: Some(container_security_context()),
            volume_mounts: Some(dataset.mounts()),
            ..Container::default()
        }],
        volumes: Some(dataset.volumes()),
        ..PodSpec::default()
    }
}

/// The capture Deployment. It names no model: the worker reads the deployed one from its
/// CameraTuning and swaps a newly promoted one in without a restart, so a promotion changes
/// nothing here.
fn capture(tuning: &CameraTuning, owner: &OwnerReference, dataset: &Dataset, config: &Config) -> Deployment {
    let name = tuning.name_any();
    let spec = &tuning.spec;
    let mut vars = worker_env(tuning, dataset);
    vars.push(env(contract::ENV_ANNOTATOR_URL, annotator_url(tuning)));
    if let Some((secret, key)) = annotator_ca(tuning) {
        vars.push(secret_env(contract::ENV_ANNOTATOR_CA, &secret, &key));
    }
    if let Some(token) = spec
        .annotation
        .endpoint
        .as_ref()
        .and_then(|e| e.token_secret_ref.as_ref())
    {
        vars.push(secret_env(contract::ENV_ANNOTATOR_TOKEN, &token.name, &token.key));
    }
    if let Some(credentials) = &spec.camera.credentials_secret_ref {
        vars.push(secret_env(
            contract::ENV_CAMERA_USERNAME,
            &credentials.name,
            &credentials.username_key,
        ));
        vars.push(secret_env(
            contract::ENV_CAMERA_PASSWORD,
            &credentials.name,
            &credentials.password_key,
        ));
    }
    if let Some(credentials) = spec
        .inference
        .mqtt
        .as_ref()
        .and_then(|m| m.credentials_secret_ref.as_ref())
    {
        vars.push(secret_env(
            contract::ENV_MQTT_USERNAME,
            &credentials.name,
            &credentials.username_key,
        ));
        vars.push(secret_env(
            contract::ENV_MQTT_PASSWORD,
            &credentials.name,
            &credentials.password_key,
        ));
    }
    let selector = BTreeMap::from([
        (labels::INSTANCE.to_string(), name.clone()),
        (labels::COMPONENT.to_string(), "capture".to_string()),
    ]);
    let mut pod_spec = worker_pod(
        tuning,
        "capture",
        vars,
        spec.camera
            .resources
            .clone()
            .unwrap_or_else(default_resources::capture),
        dataset,
        config,
    );
    // Metrics, the detections (JSON and Server-Sent Events) and health, on one port. Ready once
    // the student serves (when spec.inference asks for one).
    let container = &mut pod_spec.containers[0];
    container.ports = Some(vec![container_port("http", contract::CAPTURE_PORT)]);
    container.startup_probe = probes::startup("/healthz");
    container.liveness_probe = probes::liveness("/healthz");
    container.readiness_probe = probes::readiness("/readyz");
    if dataset.claim.is_none() {
        let spool = Volume {
            name: "spool".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::spool_claim(&name),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        };
        pod_spec.volumes.get_or_insert_default().push(spool);
        let container = &mut pod_spec.containers[0];
        container
            .volume_mounts
            .get_or_insert_default()
            .push(mount("spool", SPOOL_MOUNT));
        let vars = container.env.get_or_insert_default();
        vars.push(env(contract::ENV_SPOOL_DIR, format!("{SPOOL_MOUNT}/entries")));
        vars.push(env(contract::ENV_WORK_DIR, format!("{SPOOL_MOUNT}/work")));
    }
    place_on_camera_node(&mut pod_spec, tuning);
    let meta = metadata(&names::capture(&name), "capture", Some(&name), Some(owner));
    // The worker reads its settings from the spec when it starts: an edit rolls it.
    let settings = BTreeMap::from([(
        annotations::CAPTURE_SETTINGS.to_string(),
        capture_settings_hash(tuning),
    )]);
    Deployment {
        spec: DeploymentSpec {
            replicas: Some(1),
            // One reader per camera and an RWO volume: never two pods at once.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: template_metadata(&meta, Some(settings)),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        },
        metadata: meta,
        ..Deployment::default()
    }
}

/// The shared annotator: no owner reference (several CameraTunings use it); the operator deletes
/// it when its last user goes (see `reconcile::cleanup`).
fn annotator(teacher: &TeacherSpec, config: &Config) -> Annotator {
    let hash = teacher_hash(teacher);
    let name = names::annotator(&hash);
    let ModelRef { uri, family } = &teacher.model;
    let family = serde_json::to_value(family).unwrap();
    let family = family.as_str().expect("a model family is a string");
    let mut resources = teacher
        .resources
        .clone()
        .unwrap_or_else(default_resources::annotator);
    // With a TLS Secret the API is HTTPS on its own port (`https`), and the probes and metrics
    // stay on plain HTTP (`http`, where the kubelet and the PodMonitor look).
    let api_port = if teacher.tls_secret_name.is_some() {
        "https"
    } else {
        "http"
    };
    let mut container = Container {
        name: "annotator".into(),
        image: Some(config.worker_image.clone()),
        args: Some(vec!["annotator".into()]),
        env: Some(
            [
                vec![
                    env(contract::ENV_TEACHER_URI, uri.as_str()),
                    env(contract::ENV_TEACHER_FAMILY, family),
                ],
                log_format(config),
            ]
            .concat(),
        ),
        ports: Some(vec![container_port(api_port, ANNOTATOR_PORT)]),
        // Ready, and alive, while its inference thread runs: a stopped one is restarted.
        startup_probe: probes::startup("/v2/health/live"),
        liveness_probe: probes::liveness("/v2/health/ready"),
        readiness_probe: probes::readiness("/v2/health/ready"),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![mount("tmp", "/tmp")]),
        ..Container::default()
    };
    let mut volumes = vec![tmp_volume()];
    if let Some(secret) = &teacher.tls_secret_name {
        container.args = Some(vec![
            "annotator".into(),
            "--tls-cert-file".into(),
            format!("{ANNOTATOR_TLS_MOUNT}/tls.crt"),
            "--tls-key-file".into(),
            format!("{ANNOTATOR_TLS_MOUNT}/tls.key"),
            "--metrics-listen".into(),
            format!("0.0.0.0:{ANNOTATOR_PLAIN_PORT}"),
        ]);
        container
            .ports
            .get_or_insert_default()
            .push(container_port("http", ANNOTATOR_PLAIN_PORT));
        container.volume_mounts.get_or_insert_default().push(VolumeMount {
            read_only: Some(true),
            ..mount("tls", ANNOTATOR_TLS_MOUNT)
        });
        // The certificate and the key, not more (the Secret's `ca.crt` is for the clients).
        let item = |key: &str| KeyToPath {
            key: key.into(),
            path: key.into(),
            ..KeyToPath::default()
        };
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![item("tls.crt"), item("tls.key")]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let mut tolerations = None;
    if teacher.gpus > 0 {
        resources
            .limits
            .get_or_insert_default()
            .insert("nvidia.com/gpu".into(), Quantity(teacher.gpus.to_string()));
        // GPU nodes are commonly tainted so that only GPU workloads land there.
        tolerations = Some(vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
    }
    container.resources = Some(resources);
    let pod_spec = PodSpec {
        // The annotator needs no Kubernetes API access.
        automount_service_account_token: Some(false),
        security_context: Some(pod_security_context()),
        containers: vec![container],
        volumes: Some(volumes),
        tolerations,
        node_selector: teacher.node_selector.clone(),
        ..PodSpec::default()
    };
    let meta = with_label(metadata(&name, "annotator", None, None), labels::TEACHER, &hash);
    let selector = BTreeMap::from([
        (labels::COMPONENT.to_string(), "annotator".to_string()),
        (labels::TEACHER.to_string(), hash.clone()),
    ]);
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: template_metadata(&meta, None),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(api_port.into()),
                port: i32::from(ANNOTATOR_PORT),
                target_port: Some(IntOrString::String(api_port.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let network_policy = config
        .annotator_ingress_from
        .as_ref()
        .map(|scrapers| annotator_network_policy(&deployment, scrapers, api_port));
    Annotator {
        teacher_hash: hash,
        deployment,
        service,
        network_policy,
    }
}

/// The teacher's API answers the capture pods of the annotator's namespace; its metrics, on the
/// same port, `scrapers`; nothing else reaches it. Egress stays open: the annotator fetches its
/// model from wherever the spec's URI says.
fn tcp_port(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    }
}

fn annotator_network_policy(
    deployment: &Deployment,
    scrapers: &[NetworkPolicyPeer],
    api_port: &str,
) -> NetworkPolicy {
    let capture_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (labels::COMPONENT.to_string(), "capture".to_string()),
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let selector = deployment.spec.selector.clone();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: deployment.metadata.name.clone(),
            labels: deployment.metadata.labels.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Ingress".to_string()]),
            // The API (`http`, or `https` with TLS) to the capture pods; the metrics (always on
            // `http`) to the scrapers. No scrapers, no rule: a rule with an empty `from` would
            // admit every source.
            ingress: Some(
                std::iter::once(NetworkPolicyIngressRule {
                    from: Some(vec![capture_pods]),
                    ports: Some(vec![tcp_port(api_port)]),
                })
                .chain((!scrapers.is_empty()).then(|| NetworkPolicyIngressRule {
                    from: Some(scrapers.to_vec()),
                    ports: Some(vec![tcp_port("http")]),
                }))
                .collect(),
            ),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn training_job(
    tuning: &CameraTuning,
    owner: &OwnerReference,
    dataset: &Dataset,
    iteration: u32,
    rollout: &Rollout<'_>,
    config: &Config,
) -> Job {
    let name = tuning.name_any();
    let spec = &tuning.spec;
    let mut vars = worker_env(tuning, dataset);
    vars.push(env(
        contract::ENV_TRAINING,
        TrainingSettings::new(
            spec,
            iteration,
            rollout.deployed_model_uri,
            rollout.round_started_at,
        )
        .to_env_value(),
    ));
    let meta = with_label(
        metadata(
            &names::training_job(&name, iteration),
            "trainer",
            Some(&name),
            Some(owner),
        ),
        labels::ITERATION,
        &iteration.to_string(),
    );
    let mut pod_spec = worker_pod(
        tuning,
        "trainer",
        vars,
        spec.training
            .resources
            .clone()
            .unwrap_or_else(default_resources::trainer),
        dataset,
        config,
    );
    pod_spec.restart_policy = Some("Never".into());
    // A ReadWriteOnce volume is reachable from the camera's node only.
    if dataset.claim.is_some() {
        place_on_camera_node(&mut pod_spec, tuning);
    }
    Job {
        spec: Some(JobSpec {
            // Kubernetes retries the pod this many times before it marks the Job Failed.
            backoff_limit: Some(i32::try_from(spec.training.max_retries).unwrap_or(i32::MAX)),
            // An attempt that found a split missing (the capture worker had not written it yet)
            // is not a failure of the training: the next attempt takes a new snapshot.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        operator: "In".into(),
                        values: vec![contract::EXIT_DATASET_INCOMPLETE],
                        ..PodFailurePolicyOnExitCodesRequirement::default()
                    }),
                    ..PodFailurePolicyRule::default()
                }],
            }),
            template: PodTemplateSpec {
                metadata: template_metadata(&meta, None),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        metadata: meta,
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// `from`'s top-level fields set in `into`.
    fn merge(into: &mut Value, from: Value) {
        if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
            into.extend(from);
        }
    }

    fn tuning(spec_changes: Value) -> CameraTuning {
        let mut spec = json!({
            "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1",
                        "credentialsSecretRef": { "name": "cam-secret" } },
            "classes": ["person"],
            "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } },
            "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" } }
        });
        merge(&mut spec, spec_changes);
        serde_json::from_value(json!({
            "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
            "metadata": { "name": "entrance", "namespace": "cams", "uid": "u-1" },
            "spec": spec
        }))
        .unwrap()
    }

    fn build_all(t: &CameraTuning) -> Children {
        build(
            t,
            &Rollout {
                deployed_model_uri: "file:///m/ssd.onnx",
                train_iteration: Some(1),
                round_started_at: None,
            },
            &Config::default(),
        )
    }

    #[test]
    fn an_annotator_admits_only_its_namespaces_capture_pods_and_the_configured_scrapers() {
        let t = tuning(json!({}));
        assert!(
            build_all(&t).annotator.unwrap().network_policy.is_none(),
            "no policy unless configured"
        );
        let scraper: NetworkPolicyPeer = serde_json::from_value(json!({
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } }
        }))
        .unwrap();
        let config = Config {
            annotator_ingress_from: Some(vec![scraper.clone()]),
            ..Config::default()
        };
        let rollout = Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration: None,
            round_started_at: None,
        };
        let annotator = build(&t, &rollout, &config).annotator.unwrap();
        let policy = annotator.network_policy.unwrap();
        assert_eq!(policy.metadata.name, annotator.deployment.metadata.name);
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.pod_selector,
            Some(annotator.deployment.spec.selector.clone()),
            "the policy selects the annotator's pods"
        );
        assert_eq!(
            spec.policy_types.unwrap(),
            ["Ingress"],
            "egress stays open for the model download"
        );
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        let from = rules[0].from.clone().unwrap();
        let capture = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(capture[labels::COMPONENT], "capture");
        assert!(
            from[0].namespace_selector.is_none(),
            "capture pods of its own namespace only"
        );
        assert_eq!(from.len(), 1);
        assert_eq!(rules[1].from, Some(vec![scraper]));
        for rule in &rules {
            let ports = rule.ports.clone().unwrap();
            assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));
        }
        // No scrapers: the capture pods alone (a rule with an empty `from` admits everyone).
        let config = Config {
            annotator_ingress_from: Some(vec![]),
            ..Config::default()
        };
        let policy = build(&t, &rollout, &config)
            .annotator
            .unwrap()
            .network_policy
            .unwrap();
        let rules = policy.spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_teacher_with_a_tls_secret_serves_https_and_the_capture_pods_trust_its_issuer_alone() {
        let t = tuning(json!({ "annotation": { "teacher": {
            "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" },
            "tlsSecretName": "annotator-tls",
        } } }));
        let config = Config {
            annotator_ingress_from: Some(vec![NetworkPolicyPeer::default()]),
            ..Config::default()
        };
        let rollout = Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration: None,
            round_started_at: None,
        };
        let children = build(&t, &rollout, &config);
        let annotator = children.annotator.unwrap();
        let pod = serde_json::to_value(&annotator.deployment.spec.template.spec).unwrap();
        let container = &pod["containers"][0];
        assert_eq!(
            container["args"],
            json!([
                "annotator",
                "--tls-cert-file",
                "/tls/tls.crt",
                "--tls-key-file",
                "/tls/tls.key",
                "--metrics-listen",
                "0.0.0.0:9090"
            ])
        );
        assert_eq!(
            container["ports"],
            json!([{ "name": "https", "containerPort": 8080 }, { "name": "http", "containerPort": 9090 }])
        );
        // The probes and the PodMonitor read the plain port.
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
        let tls_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .unwrap();
        assert_eq!(tls_volume["secret"]["secretName"], "annotator-tls");
        assert!(
            !tls_volume.to_string().contains("ca.crt"),
            "the annotator mounts its certificate and key, not more: {tls_volume}"
        );
        let service = serde_json::to_value(&annotator.service.spec).unwrap();
        assert_eq!(
            service["ports"],
            json!([{ "name": "https", "port": 8080, "targetPort": "https" }])
        );
        let rules = annotator.network_policy.unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("https".into()))
        );
        assert_eq!(
            rules[1].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("http".into()))
        );
        // The capture worker: the https:// Service URL and the issuer from the same Secret.
        let capture = serde_json::to_value(&children.capture.spec.template.spec).unwrap();
        let vars = capture["containers"][0]["env"].as_array().unwrap().clone();
        let find = |name: &str| vars.iter().find(|v| v["name"] == name).cloned().unwrap();
        assert_eq!(
            find(contract::ENV_ANNOTATOR_URL)["value"],
            format!("https://annotator-{}:8080", annotator.teacher_hash)
        );
        assert_eq!(
            find(contract::ENV_ANNOTATOR_CA)["valueFrom"]["secretKeyRef"],
            json!({ "name": "annotator-tls", "key": "ca.crt" })
        );
        // Another TLS Secret is another annotator: the certificate is part of the teacher's identity.
        let other = tuning(json!({ "annotation": { "teacher": {
            "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" },
            "tlsSecretName": "other-tls",
        } } }));
        assert_ne!(
            build(&other, &rollout, &config).annotator.unwrap().teacher_hash,
            annotator.teacher_hash
        );
    }

    #[test]
    fn an_https_endpoint_is_trusted_by_the_issuer_its_ca_secret_names() {
        let t = tuning(json!({ "annotation": { "teacher": null, "endpoint": {
            "url": "https://labels.example:8443",
            "caSecretRef": { "name": "labels-ca", "key": "ca.pem" },
        } } }));
        let children = build_all(&t);
        assert!(children.annotator.is_none());
        let capture = serde_json::to_value(&children.capture.spec.template.spec).unwrap();
        let vars = capture["containers"][0]["env"].as_array().unwrap().clone();
        let find = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
        assert_eq!(
            find(contract::ENV_ANNOTATOR_URL).unwrap()["value"],
            "https://labels.example:8443"
        );
        assert_eq!(
            find(contract::ENV_ANNOTATOR_CA).unwrap()["valueFrom"]["secretKeyRef"],
            json!({ "name": "labels-ca", "key": "ca.pem" })
        );
        // Without a CA Secret the worker trusts the system's roots: no variable.
        let plain = tuning(
            json!({ "annotation": { "teacher": null, "endpoint": { "url": "https://labels.example" } } }),
        );
        let capture = serde_json::to_value(&build_all(&plain).capture.spec.template.spec).unwrap();
        assert!(!capture.to_string().contains(contract::ENV_ANNOTATOR_CA));
    }

    /// Every pod template, as JSON.
    fn pods(children: &Children) -> Vec<(String, Value)> {
        let mut pods = vec![(
            "capture".to_string(),
            serde_json::to_value(&children.capture.spec.template).unwrap(),
        )];
        if let Some(a) = &children.annotator {
            pods.push((
                "annotator".into(),
                serde_json::to_value(&a.deployment.spec.template).unwrap(),
            ));
        }
        if let Some(job) = &children.training_job {
            pods.push((
                "trainer".into(),
                serde_json::to_value(&job.spec.as_ref().unwrap().template).unwrap(),
            ));
        }
        pods
    }

    #[test]
    fn the_workers_log_json_lines_when_the_operator_does() {
        let t = tuning(
            json!({ "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" } } } }),
        );
        let rollout = Rollout {
            deployed_model_uri: "file:///m/ssd.onnx",
            train_iteration: Some(1),
            round_started_at: None,
        };
        let log_json = |children: &Children| -> Vec<(String, Option<String>)> {
            pods(children)
                .into_iter()
                .map(|(name, pod)| {
                    let env = pod["spec"]["containers"][0]["env"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let value = env
                        .iter()
                        .find(|v| v["name"] == contract::ENV_LOG_JSON)
                        .map(|v| v["value"].as_str().unwrap().to_string());
                    (name, value)
                })
                .collect()
        };
        let json = build(
            &t,
            &rollout,
            &Config {
                log_json: true,
                ..Config::default()
            },
        );
        let text = build(&t, &rollout, &Config::default());
        let (json, text) = (log_json(&json), log_json(&text));
        // Capture, the annotator and the trainer.
        assert_eq!(json.len(), 3, "{json:?}");
        for (name, value) in json {
            assert_eq!(value.as_deref(), Some("true"), "{name}");
        }
        for (name, value) in text {
            assert_eq!(value, None, "{name}");
        }
    }

    #[test]
    fn every_pod_meets_the_restricted_pod_security_standard() {
        let children = build_all(&tuning(
            json!({ "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" }, "gpus": 1 } } }),
        ));
        for (name, pod) in pods(&children) {
            let spec = &pod["spec"];
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            for container in spec["containers"].as_array().unwrap() {
                let sc = &container["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            }
            for volume in spec["volumes"].as_array().unwrap() {
                assert!(volume.get("hostPath").is_none(), "{name}");
            }
        }
    }

    #[test]
    fn the_capture_pod_runs_on_the_cameras_node_with_credentials_from_the_secret() {
        let children = build_all(&tuning(json!({})));
        let pod = serde_json::to_value(&children.capture.spec.template).unwrap();
        let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert_eq!(
            terms[0]["matchFields"][0],
            json!({ "key": "metadata.name", "operator": "In", "values": ["edge-1"] })
        );
        let env = &pod["spec"]["containers"][0]["env"];
        let password = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == contract::ENV_CAMERA_PASSWORD)
            .unwrap();
        assert_eq!(
            password["valueFrom"]["secretKeyRef"],
            json!({ "name": "cam-secret", "key": "password" })
        );
        assert!(password.get("value").is_none());
        assert_eq!(pod["spec"]["serviceAccountName"], "entrance-worker");
        assert!(
            !env.to_string().contains(contract::ENV_TRAINING),
            "the worker reads its model from the CameraTuning"
        );

        // The MQTT broker's credentials come from their Secret too.
        let with_mqtt = build_all(&tuning(json!({ "inference": { "mqtt": {
            "url": "mqtt://broker:1883", "credentialsSecretRef": { "name": "mqtt-secret", "usernameKey": "u" } } } })));
        let pod = serde_json::to_value(&with_mqtt.capture.spec.template).unwrap();
        let env = pod["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        let var =
            |name: &str| env.iter().find(|e| e["name"] == name).unwrap()["valueFrom"]["secretKeyRef"].clone();
        assert_eq!(
            var(contract::ENV_MQTT_USERNAME),
            json!({ "name": "mqtt-secret", "key": "u" })
        );
        assert_eq!(
            var(contract::ENV_MQTT_PASSWORD),
            json!({ "name": "mqtt-secret", "key": "password" })
        );

        let by_selector = build_all(&tuning(
            json!({ "camera": { "url": "rtsp://cam/s", "nodeSelector": { "site": "gate" } } }),
        ));
        let pod = serde_json::to_value(&by_selector.capture.spec.template).unwrap();
        assert_eq!(pod["spec"]["nodeSelector"], json!({ "site": "gate" }));
        assert!(pod["spec"].get("affinity").is_none());
    }

    #[test]
    fn a_gpu_teacher_asks_for_gpus_and_tolerates_gpu_nodes() {
        let t = tuning(json!({ "annotation": { "teacher": {
            "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" }, "gpus": 2, "nodeSelector": { "gpu": "h100" } } } }));
        let annotator = build_all(&t).annotator.unwrap();
        let pod = serde_json::to_value(&annotator.deployment.spec.template).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            "2"
        );
        assert_eq!(pod["spec"]["nodeSelector"], json!({ "gpu": "h100" }));
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);

        let cpu = tuning(
            json!({ "annotation": { "teacher": { "model": { "uri": "file:///m/yolo.onnx", "family": "yolo" }, "gpus": 0 } } }),
        );
        let pod = serde_json::to_value(&build_all(&cpu).annotator.unwrap().deployment.spec.template).unwrap();
        let resources = &pod["spec"]["containers"][0]["resources"];
        assert!(resources["limits"].get("nvidia.com/gpu").is_none(), "{resources}");
        assert!(pod["spec"].get("tolerations").is_none());
    }

    #[test]
    fn every_worker_that_serves_http_is_probed_on_the_port_it_exposes_and_the_trainer_is_not() {
        let pods: BTreeMap<String, Value> = pods(&build_all(&tuning(json!({})))).into_iter().collect();
        let container = |worker: &str| pods[worker]["spec"]["containers"][0].clone();
        let (capture, annotator) = (container("capture"), container("annotator"));
        for (worker, ready) in [(&capture, "/readyz"), (&annotator, "/v2/health/ready")] {
            assert_eq!(worker["ports"][0]["name"], "http");
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                assert_eq!(worker[probe]["httpGet"]["port"], "http", "{probe}: {worker}");
            }
            assert_eq!(worker["readinessProbe"]["httpGet"]["path"], ready);
            // Started within 5 minutes; a stuck one restarted after 30 s.
            let startup = &worker["startupProbe"];
            assert_eq!(
                startup["periodSeconds"].as_i64().unwrap() * startup["failureThreshold"].as_i64().unwrap(),
                300
            );
        }
        let trainer = container("trainer");
        assert!(trainer.get("livenessProbe").is_none() && trainer.get("ports").is_none());
    }

    #[test]
    fn a_worker_without_resources_in_the_spec_gets_requests_and_a_memory_limit_and_the_spec_wins_where_set() {
        let defaults: BTreeMap<String, Value> = pods(&build_all(&tuning(json!({})))).into_iter().collect();
        for (worker, pod) in &defaults {
            let resources = &pod["spec"]["containers"][0]["resources"];
            for key in ["cpu", "memory"] {
                assert!(resources["requests"][key].is_string(), "{worker}: {resources}");
            }
            assert!(resources["limits"]["memory"].is_string(), "{worker}: {resources}");
            // No CPU limit: throttling a decoder drops frames.
            assert!(resources["limits"].get("cpu").is_none(), "{worker}: {resources}");
        }
        assert_eq!(defaults.len(), 3);
        let set = json!({ "requests": { "cpu": "2" } });
        let pods: BTreeMap<String, Value> = pods(&build_all(&tuning(json!({
            "camera": { "url": "rtsp://cam/stream", "nodeName": "edge-1", "resources": set },
            "training": { "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" }, "resources": set },
        }))))
        .into_iter()
        .collect();
        for worker in ["capture", "trainer"] {
            assert_eq!(
                pods[worker]["spec"]["containers"][0]["resources"], set,
                "{worker}"
            );
        }
    }

    #[test]
    fn the_same_teacher_means_the_same_annotator() {
        let a = build_all(&tuning(json!({}))).annotator.unwrap();
        let b = build_all(&tuning(json!({ "classes": ["car"] })))
            .annotator
            .unwrap();
        assert_eq!(a, b);
        let other = tuning(
            json!({ "annotation": { "teacher": { "model": { "uri": "file:///m/yolo-x.onnx", "family": "yolo" } } } }),
        );
        assert_ne!(build_all(&other).annotator.unwrap().teacher_hash, a.teacher_hash);
        let env = serde_json::to_string(&build_all(&tuning(json!({}))).capture.spec.template).unwrap();
        assert!(env.contains(&format!("http://annotator-{}:8080", a.teacher_hash)));
    }

    #[test]
    fn an_existing_endpoint_replaces_the_annotator() {
        let t = tuning(
            json!({ "annotation": { "endpoint": { "url": "https://teacher.ml.example.com",
            "tokenSecretRef": { "name": "teacher-token", "key": "token" } } } }),
        );
        let mut t = t;
        t.spec.annotation.teacher = None;
        let children = build_all(&t);
        assert!(children.annotator.is_none());
        let env =
            serde_json::to_value(&children.capture.spec.template).unwrap()["spec"]["containers"][0]["env"]
                .clone();
        let find = |name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            find(contract::ENV_ANNOTATOR_URL)["value"],
            "https://teacher.ml.example.com"
        );
        assert_eq!(
            find(contract::ENV_ANNOTATOR_TOKEN)["valueFrom"]["secretKeyRef"]["name"],
            "teacher-token"
        );
    }

    #[test]
    fn a_training_attempt_that_found_the_dataset_incomplete_is_not_counted_as_a_retry() {
        let t = tuning(json!({ "training": {
            "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" }, "maxRetries": 3 } }));
        let job = build_all(&t).training_job.unwrap().spec.unwrap();
        assert_eq!(job.backoff_limit, Some(3));
        assert_eq!(
            job.template.spec.unwrap().restart_policy.as_deref(),
            Some("Never")
        );
        let rules = job.pod_failure_policy.unwrap().rules;
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action, "Ignore");
        let codes = rules[0].on_exit_codes.as_ref().unwrap();
        assert_eq!(
            (codes.operator.as_str(), codes.values.as_slice()),
            ("In", &[contract::EXIT_DATASET_INCOMPLETE][..])
        );
    }

    #[test]
    fn object_storage_needs_no_claim_and_takes_keys_from_the_secret() {
        let t = tuning(
            json!({ "dataset": { "storage": { "s3": { "bucket": "data", "prefix": "site/cam",
            "credentialsSecretRef": { "name": "s3" } } } } }),
        );
        let children = build_all(&t);
        assert!(children.dataset_claim.is_none());
        let job = serde_json::to_string(&children.training_job.unwrap()).unwrap();
        assert!(job.contains("s3://data/site/cam"));
        assert!(
            job.contains(&format!(
                r#""secretKeyRef":{{"key":"{}","name":"s3"}}"#,
                contract::ENV_AWS_SECRET_ACCESS_KEY
            )),
            "{job}"
        );
        // Off the camera's volume, the trainer may run anywhere.
        assert!(!job.contains("edge-1"));
    }

    #[test]
    fn in_object_storage_mode_the_spool_outlives_the_capture_pod() {
        let t = tuning(json!({ "dataset": { "storage": { "s3": { "bucket": "data",
            "credentialsSecretRef": { "name": "s3" } } } } }));
        let children = build_all(&t);
        let claim = children.spool_claim.expect("a spool claim");
        assert_eq!(claim.metadata.name.as_deref(), Some("entrance-spool"));
        assert_eq!(
            claim.metadata.owner_references.unwrap()[0].name,
            "entrance",
            "deleted with its CameraTuning"
        );
        let pod = serde_json::to_value(&children.capture.spec.template.spec).unwrap();
        assert!(pod["volumes"].as_array().unwrap().contains(
            &json!({ "name": "spool", "persistentVolumeClaim": { "claimName": "entrance-spool" } })
        ));
        let container = &pod["containers"][0];
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(&json!({ "name": "spool", "mountPath": SPOOL_MOUNT }))
        );
        assert!(container["env"].as_array().unwrap().contains(
            &json!({ "name": contract::ENV_SPOOL_DIR, "value": format!("{SPOOL_MOUNT}/entries") })
        ));
        // The working copy of the dataset (drift samples included) stays with the spool.
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .contains(&json!({ "name": contract::ENV_WORK_DIR, "value": format!("{SPOOL_MOUNT}/work") }))
        );
        // On a claim, the spool is on the dataset volume already.
        assert!(build_all(&tuning(json!({}))).spool_claim.is_none());
    }

    #[test]
    fn an_edit_the_capture_worker_reads_rolls_its_pod_and_a_training_edit_does_not() {
        let base = build_all(&tuning(json!({})));
        let template = |c: &Children| c.capture.spec.template.clone();
        let motion = build_all(&tuning(json!({ "motion": { "threshold": 40 } })));
        assert_ne!(template(&base), template(&motion));
        let training = build_all(&tuning(json!({ "training": {
            "student": { "uri": "file:///m/ssd.onnx", "family": "ssdRaw" }, "epochs": 3 } })));
        assert_eq!(template(&base), template(&training));
        assert_ne!(base.training_job, training.training_job, "the Job carries it");
    }

    #[test]
    fn the_worker_role_covers_only_its_own_cameratuning() {
        let role = serde_json::to_value(build_all(&tuning(json!({}))).role).unwrap();
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(rule["resourceNames"], json!(["entrance"]));
            assert!(
                !rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v == "delete" || v == "update" || v == "*")
            );
        }
    }
}
