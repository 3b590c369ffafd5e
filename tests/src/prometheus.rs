//! Debian's Prometheus (`scripts/prometheus`) scraping the real components of a test, and the
//! chart's dashboard queries and alert expressions read back from it: a panel on a series that
//! no component exports, or exports under other labels, fails a test instead of staying empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::Component;
use crate::{prometheus_binaries, repo_root, wait_for};

/// A Prometheus server on loopback with its own data directory.
#[derive(Debug)]
pub struct Prometheus {
    address: String,
    _process: Component,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (a YAML list, the `scrape_configs` of its
    /// configuration file) under `dir`, and waits until it is ready.
    pub async fn start(dir: &Path, scrape_interval: &str, scrape_configs: &str) -> Result<Self> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: {scrape_interval}, evaluation_interval: {scrape_interval} }}\n\
                 scrape_configs:\n{scrape_configs}"
            ),
        )?;
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let binary = prometheus_binaries()?.join("prometheus");
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={address}"),
        ];
        let mut process = Component::start("prometheus", &binary, &args, dir.join("prometheus.log"))?;
        let client = http_client();
        let ready = wait_for(Duration::from_secs(30), || async {
            let url = format!("http://{address}/-/ready");
            let answer = client.get(&url).send().await.ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
        if ready.is_err() {
            let tail = process.log_tail(30);
            process.stop(Duration::from_secs(1));
            bail!("Prometheus was not ready in 30 s:\n{tail}");
        }
        Ok(Self {
            address,
            _process: process,
        })
    }

    /// The result of an instant query (a list of samples), or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        self.api(expr, "query", &[("query", expr.to_string())]).await
    }

    /// The `data.result` of a POST to `/api/v1/<endpoint>`, or the error Prometheus gave.
    async fn api(&self, expr: &str, endpoint: &str, form: &[(&str, String)]) -> Result<Vec<Value>> {
        let answer: Value = http_client()
            .post(format!("http://{}/api/v1/{endpoint}", self.address))
            .form(form)
            .send()
            .await?
            .json()
            .await?;
        if answer["status"] != "success" {
            bail!("{expr}: {}", answer["error"]);
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of a range query over the last `span` at `step`, one list of (time, value)
    /// per series, labelled by `legend` (the labels of each series, rendered).
    pub async fn query_range(&self, expr: &str, span: Duration, step: Duration) -> Result<Vec<Series>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let form = [
            ("query", expr.to_string()),
            ("start", (end - span.as_secs_f64()).to_string()),
            ("end", end.to_string()),
            ("step", step.as_secs_f64().to_string()),
        ];
        let series = self.api(expr, "query_range", &form).await?;
        Ok(series
            .iter()
            .map(|s| Series {
                labels: s["metric"].clone(),
                points: s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?)))
                    .collect(),
            })
            .collect())
    }

    /// The scrape targets Prometheus found, with their health (`up`, `down`, `unknown`).
    pub async fn targets(&self) -> Result<Vec<Value>> {
        let answer: Value = http_client()
            .get(format!("http://{}/api/v1/targets", self.address))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// One series of a range query.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: Value,
    pub points: Vec<(f64, f64)>,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        // Loopback only: never a proxy from the environment.
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// One PromQL expression the chart ships: a dashboard panel's or variable's, or an alert's.
#[derive(Debug, Clone)]
pub struct ShippedQuery {
    /// `fleet.json`, `camera.json` or `alerts.yaml`.
    pub file: String,
    /// The panel's title or the alert's name.
    pub title: String,
    /// The dashboard row it is under (the alert group for an alert).
    pub row: String,
    /// Of a panel (not a variable's list of values, not an alert).
    pub panel: bool,
    pub expr: String,
    /// A panel's legend format (`{{label}}` for a label's value) and unit.
    pub legend: String,
    pub unit: String,
}

fn chart() -> PathBuf {
    repo_root().join("charts/edge-autotuner")
}

/// Every PromQL expression of every dashboard panel and variable, in panel order.
pub fn dashboard_queries() -> Vec<ShippedQuery> {
    let dir = chart().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut queries = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            if let Some(query) = variable["query"].as_str().filter(|_| variable["type"] == "query") {
                queries.push(ShippedQuery {
                    file: file.clone(),
                    title: format!("variable {}", variable["name"].as_str().unwrap_or_default()),
                    row: String::new(),
                    panel: false,
                    expr: query.to_string(),
                    legend: String::new(),
                    unit: String::new(),
                });
            }
        }
        let mut row = String::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            if panel["type"] == "row" {
                row = panel["title"].as_str().unwrap_or_default().to_string();
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(ShippedQuery {
                    file: file.clone(),
                    title: panel["title"].as_str().unwrap_or_default().to_string(),
                    row: row.clone(),
                    panel: true,
                    expr: target["expr"].as_str().unwrap().to_string(),
                    legend: target["legendFormat"].as_str().unwrap_or_default().to_string(),
                    unit: panel["fieldConfig"]["defaults"]["unit"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
        }
    }
    queries
}

/// Every alert's expression (`rules/alerts.yaml`).
pub fn alert_queries() -> Vec<ShippedQuery> {
    let rules: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("rules/alerts.yaml")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            queries.push(ShippedQuery {
                file: "alerts.yaml".into(),
                title: rule["alert"].as_str().unwrap_or_default().to_string(),
                row: group["name"].as_str().unwrap_or_default().to_string(),
                panel: false,
                expr: rule["expr"].as_str().unwrap().to_string(),
                legend: String::new(),
                unit: String::new(),
            });
        }
    }
    queries
}

/// The `autotuner_*` metric names an expression reads (a histogram's `_bucket`, `_sum` and
/// `_count` series by the histogram's name).
pub fn metrics_read(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("autotuner_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A dashboard query as Grafana sends it, with its variables set.
pub fn with_variables(expr: &str, variables: &[(&str, &str)]) -> String {
    let mut expr = expr.replace("$__rate_interval", "1m");
    for (name, value) in variables {
        expr = expr.replace(&format!("${name}"), value);
    }
    expr
}

/// A legend format (`{{phase}}: ...`) with the labels of a series put in.
pub fn legend(format: &str, labels: &Value) -> String {
    let mut text = format.to_string();
    if let Some(labels) = labels.as_object() {
        for (name, value) in labels {
            text = text.replace(&format!("{{{{{name}}}}}"), value.as_str().unwrap_or_default());
        }
    }
    text
}
