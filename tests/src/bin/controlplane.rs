//! Starts the test control plane for humans, the same way the tests do.
//!
//!     controlplane [--controllers] [--node] [-- COMMAND [ARGS...]]
//!
//! `--node` adds a real node (containerd, kubelet, kube-proxy, CoreDNS; needs root) with the
//! project's images imported, on which the chart's pods run.
//!
//! Without a command it prints how to reach the cluster and runs until Ctrl-C. With a command it
//! runs it with `KUBECONFIG` set and the pinned `kubectl` and `helm` first on `PATH`, then tears
//! everything down and exits with the command's status.

use std::process::ExitCode;

use anyhow::{Context, Result};
use autotuner_tests::{ControlPlane, Options};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let mut options = Options::default();
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--controllers" => options.controllers = true,
            "--node" => options.node = true,
            "--" => command.extend(args.by_ref()),
            "-h" | "--help" => {
                println!("usage: controlplane [--controllers] [--node] [-- COMMAND [ARGS...]]");
                return Ok(ExitCode::SUCCESS);
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }

    let mut tools = vec!["kubectl", "helm"];
    tools.retain(|_| !command.is_empty());
    let bin = autotuner_tests::binaries(&tools)?;
    eprintln!(
        "starting etcd and kube-apiserver{} ...",
        match (options.controllers, options.node) {
            (_, true) => ", kube-controller-manager, kube-scheduler and a node",
            (true, false) => ", kube-controller-manager and kube-scheduler",
            (false, false) => "",
        }
    );
    let plane = ControlPlane::start(options).await?;
    eprintln!(
        "control plane ready at {} (files in {})",
        plane.server(),
        plane.dir().display()
    );

    if command.is_empty() {
        println!("export KUBECONFIG={}", plane.kubeconfig().display());
        eprintln!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await?;
        plane.stop();
        return Ok(ExitCode::SUCCESS);
    }

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("KUBECONFIG", plane.kubeconfig())
        .env("PATH", path)
        .status()
        .await
        .with_context(|| format!("running {}", command[0]))?;
    plane.stop();
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}
