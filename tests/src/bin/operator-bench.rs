//! Scale benchmark of the operator: N CameraTunings against a real kube-apiserver.
//!
//!     cargo build --release -p autotuner-operator -p autotuner-tests
//!     target/release/operator-bench [--count 1000] [--namespaces 10] [--concurrency 1] [--out FILE]
//!
//! Runs the release operator binary as its own process (so its peak RSS is its own), creates the
//! CameraTunings as fast as the API server takes them, and measures the time until every one is
//! in its steady state (Capturing: workloads created, status written), the operator's peak RSS
//! (VmHWM), and the reconcile-duration quantiles from its own Prometheus histogram. The
//! control plane is etcd + kube-apiserver without controller-manager (no pods are made, so the
//! figure is the operator's work and the API server's, not the Deployment controller's).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use autotuner_api::{CameraTuning, Phase};
use autotuner_tests::{ControlPlane, Options, install_crd};
use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::watcher;
use serde_json::json;

struct Args {
    count: usize,
    namespaces: usize,
    concurrency: u16,
    create_concurrency: usize,
    out: Option<String>,
}

fn args() -> Result<Args> {
    let mut args = Args {
        count: 1000,
        namespaces: 10,
        concurrency: 1,
        create_concurrency: 32,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("a flag needs a value");
        match flag.as_str() {
            "--count" => args.count = value()?.parse()?,
            "--namespaces" => args.namespaces = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--create-concurrency" => args.create_concurrency = value()?.parse()?,
            "--out" => args.out = Some(value()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let operator_bin = std::env::current_exe()?.with_file_name("autotuner-operator");
    if !operator_bin.is_file() {
        bail!(
            "{} not found: cargo build --release -p autotuner-operator",
            operator_bin.display()
        );
    }
    let plane = ControlPlane::start(Options::default()).await?;
    let client = plane.client().await?;
    install_crd(&client).await?;
    for ns in std::iter::once("autotuner-system".to_string())
        .chain((0..args.namespaces).map(|i| format!("bench-{i}")))
    {
        plane.kubectl(["create", "namespace", &ns])?;
    }

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut operator = Command::new(&operator_bin)
        .args([
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
            "--lease-namespace",
            "autotuner-system",
        ])
        .arg(format!("--concurrency={}", args.concurrency))
        .env("KUBECONFIG", plane.kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = operator.id();

    // Wait until it leads (it reports ready and has reconciled nothing yet).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let apiserver_before = apiserver_write_buckets(&client).await?;
    let started = Instant::now();
    let created = futures::stream::iter(0..args.count)
        .map(|i| {
            let client = client.clone();
            let ns = format!("bench-{}", i % args.namespaces);
            async move {
                let tuning: CameraTuning = serde_json::from_value(json!({
                    "apiVersion": "autotuner.io/v1alpha1", "kind": "CameraTuning",
                    "metadata": { "name": format!("camera-{i}") },
                    "spec": {
                        "camera": { "url": format!("rtsp://camera-{i}.example.invalid/stream"), "nodeName": format!("edge-{}", i % 50) },
                        "classes": ["person", "car"],
                        "annotation": { "teacher": { "model": { "uri": "s3://models/yolov12n.onnx", "family": "yolo" } } },
                        "training": { "student": { "uri": "s3://models/ssd.onnx", "family": "ssdRaw" } }
                    }
                }))?;
                Api::<CameraTuning>::namespaced(client, &ns).create(&PostParams::default(), &tuning).await?;
                anyhow::Ok(())
            }
        })
                .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<_>>()
        .await;
    created?;
    let created_after = started.elapsed();
    eprintln!(
        "created {} CameraTunings in {:.1} s",
        args.count,
        created_after.as_secs_f64()
    );

    // Watch rather than poll: listing 1,000 objects several times a second would load the API
    // server the benchmark measures the operator against.
    let all: Api<CameraTuning> = Api::all(client.clone());
    let mut capturing: std::collections::HashMap<String, bool> = Default::default();
    let mut events = std::pin::pin!(watcher(all, watcher::Config::default()));
    let steady_after = loop {
        let event = tokio::time::timeout(Duration::from_secs(600), events.try_next())
            .await
            .context("no CameraTuning event for 10 min")??
            .context("the watch ended")?;
        match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                let steady = t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Capturing);
                capturing.insert(format!("{:?}/{}", t.metadata.namespace, t.name_any()), steady);
            }
            watcher::Event::Delete(t) => {
                capturing.remove(&format!("{:?}/{}", t.metadata.namespace, t.name_any()));
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        if capturing.values().filter(|&&c| c).count() == args.count {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not all {} in steady state after 10 min", args.count);
        }
    };
    eprintln!(
        "all {} Capturing after {:.1} s",
        args.count,
        steady_after.as_secs_f64()
    );
    // Let the follow-up reconciliations (owned-object events) settle before reading the figures.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let metrics = http_get(metrics_port, "/metrics")?;
    let apiserver_after = apiserver_write_buckets(&client).await?;
    let apiserver_writes: Vec<(f64, f64)> = apiserver_after
        .iter()
        .zip(&apiserver_before)
        .map(|(&(le, after), &(_, before))| (le, after - before))
        .collect();
    let peak_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM")?;
    let operator_cpu_seconds = cpu_seconds(pid)?;
    let apiserver_cpu_seconds = plane_cpu_seconds("kube-apiserver");
    operator.kill()?;
    let _ = operator.wait();

    let buckets = histogram(&metrics, "autotuner_operator_reconcile_duration_seconds");
    let reconciliations = counter(&metrics, "autotuner_operator_reconciliations_total");
    let errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("autotuner_operator_reconcile_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, x| sum + x);
    let report = json!({
        "benchmark": "operator-scale",
        "command": format!(
            "target/release/operator-bench --count {} --namespaces {} --concurrency {} --create-concurrency {}",
            args.count, args.namespaces, args.concurrency, args.create_concurrency
        ),
        "machine": machine(),
        "control_plane": "etcd v3.7.0 + kube-apiserver v1.37.2 on loopback, no controller-manager",
        "cameratunings": args.count,
        "namespaces": args.namespaces,
        "operator_concurrency": args.concurrency,
        "create_concurrency": args.create_concurrency,
        "create_seconds": round(created_after.as_secs_f64()),
        "steady_state_seconds": round(steady_after.as_secs_f64()),
        "operator_peak_rss_mib": round(peak_rss_kib as f64 / 1024.0),
        "operator_cpu_seconds": round(operator_cpu_seconds),
        "apiserver_cpu_seconds": round(apiserver_cpu_seconds),
        "reconciliations": reconciliations,
        "reconcile_errors": errors,
        "reconcile_p50_ms": round(quantile(&buckets, 0.50) * 1000.0),
        "reconcile_p99_ms": round(quantile(&buckets, 0.99) * 1000.0),
        "apiserver_writes": apiserver_writes.last().map_or(0.0, |b| b.1),
        "apiserver_write_p50_ms": round(quantile(&apiserver_writes, 0.50) * 1000.0),
        "apiserver_write_p99_ms": round(quantile(&apiserver_writes, 0.99) * 1000.0),
        "goals": { "steady_state_seconds": 30, "operator_peak_rss_mib": 64, "reconcile_p99_ms": 50 },
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{text}\n"))?;
    }
    plane.stop();
    Ok(())
}

/// User + system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("malformed stat")?
        .1
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// CPU time of the control-plane process with this name (for the load picture).
fn plane_cpu_seconds(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpus} CPUs, {}", autotuner_vision::cpu_model())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The API server's own latency histogram of writes (POST, PUT, PATCH, server-side APPLY,
/// DELETE; every resource),
/// cumulative (upper bound, count) pairs: the floor under any reconciliation that writes.
async fn apiserver_write_buckets(client: &kube::Client) -> Result<Vec<(f64, f64)>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_duration_seconds_bucket{"))
    {
        let write = ["POST", "PUT", "PATCH", "APPLY", "DELETE"]
            .iter()
            .any(|verb| line.contains(&format!("verb=\"{verb}\"")));
        let Some((labels, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
        let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
        if write {
            entry.1 += count.parse::<f64>()?;
        }
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(sorted)
}

/// Cumulative (upper bound, count) pairs of a histogram.
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Prometheus' histogram_quantile: linear interpolation inside the bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return previous.0;
            }
            let in_bucket = count - previous.1;
            let fraction = if in_bucket > 0.0 {
                (rank - previous.1) / in_bucket
            } else {
                0.0
            };
            return previous.0 + (le - previous.0) * fraction;
        }
        previous = (le, count);
    }
    f64::NAN
}
