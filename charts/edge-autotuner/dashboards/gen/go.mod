// Writes the chart's Grafana dashboards with the Grafana Foundation SDK (Apache-2.0); a module of
// its own, checked by scripts/test (go run . -check).
module github.com/edge-autotuner/edge-autotuner/charts/dashboards/gen

go 1.26.0

require github.com/grafana/grafana-foundation-sdk/go v0.0.22
