//! The operator binary: leader election, the controller, and the probe/metrics endpoint.

use std::net::SocketAddr;
use std::process::ExitCode;

use autotuner_api::contract;
use autotuner_operator::{Config, Election, Ended, Metrics, http};
use clap::Parser;

/// Reconciles CameraTuning resources (autotuner.io/v1alpha1).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Image holding the worker binaries (capture, annotator, trainer).
    #[arg(long, env = contract::ENV_WORKER_IMAGE, default_value_t = Config::default().worker_image)]
    worker_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = contract::ENV_METRICS_ADDRESS, default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// CameraTunings reconciled at once.
    #[arg(long, env = contract::ENV_CONCURRENCY, default_value_t = Config::default().concurrency)]
    concurrency: u16,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "autotuner-system")]
    lease_namespace: String,
    /// Reconcile the CameraTunings of this namespace only (default: all namespaces).
    #[arg(long, env = contract::ENV_WATCH_NAMESPACE)]
    watch_namespace: Option<String>,
    /// Name of the leader-election Lease (the chart's release-derived name, so that two releases
    /// elect their leaders apart).
    #[arg(long, default_value = autotuner_operator::rbac::NAME)]
    lease_name: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "autotuner-operator")]
    identity: String,
    /// Seconds a leader may go without renewing its Lease.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = contract::ENV_LOG_JSON)]
    log_json: bool,
    /// Give each annotator a NetworkPolicy admitting the capture pods of its namespace and these
    /// peers (a JSON list of NetworkPolicyPeers: its metrics scraper) only.
    #[arg(long, value_parser = parse_peers)]
    annotator_ingress_from: Option<Peers>,
    /// Instead of running: GET this http:// URL and exit 0 on a 2xx answer, 1 otherwise (the
    /// chart's `helm test` pod runs the operator's image this way; the image has no curl).
    #[arg(long)]
    check_url: Option<String>,
}

/// NetworkPolicyPeers given as JSON on the command line.
#[derive(Debug, Clone)]
struct Peers(Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>);

fn parse_peers(text: &str) -> Result<Peers, String> {
    serde_json::from_str(text)
        .map(Peers)
        .map_err(|e| format!("not a JSON list of NetworkPolicyPeers: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(url) = &args.check_url {
        return match http::check(url).await {
            Ok(status) => {
                println!("{url}: {status}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    autotuner_api::logging::init(args.log_json, "info,kube=warn");
    match run(args).await {
        Ok(Ended::Shutdown) => ExitCode::SUCCESS,
        Ok(Ended::LostLeadership) => ExitCode::from(3),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "operator failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Ended> {
    let client = kube::Client::try_default().await?;
    let probes = http::Probes::new(Metrics::default());
    let server = http::serve(args.metrics_address, probes.clone());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    let config = Config {
        worker_image: args.worker_image,
        concurrency: args.concurrency,
        namespace: args.watch_namespace,
        annotator_ingress_from: args.annotator_ingress_from.map(|peers| peers.0),
        log_json: args.log_json,
        ..Config::default()
    };
    let election = Election {
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity: args.identity,
        lease_seconds: args.lease_seconds,
    };
    autotuner_operator::run_elected(client, config, probes, election, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotator_ingress_from_takes_a_json_list_of_peers_and_refuses_anything_else() {
        let args = Args::try_parse_from([
            "operator",
            r#"--annotator-ingress-from=[{"namespaceSelector":{},"podSelector":{"matchLabels":{"app.kubernetes.io/name":"prometheus"}}}]"#,
        ])
        .unwrap();
        let peers = args.annotator_ingress_from.unwrap().0;
        assert_eq!(peers.len(), 1);
        assert!(peers[0].namespace_selector.is_some());
        for bad in [
            "prometheus",
            r#"{"namespaceSelector":{}}"#,
            r#"[{"podSelector":3}]"#,
        ] {
            let error = Args::try_parse_from(["operator", &format!("--annotator-ingress-from={bad}")])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("not a JSON list of NetworkPolicyPeers"),
                "{bad}: {error}"
            );
        }
        let unset = Args::try_parse_from(["operator"]).unwrap();
        assert!(unset.annotator_ingress_from.is_none(), "no flag, no policies");
    }
}
