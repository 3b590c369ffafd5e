// Command gen writes the chart's Grafana dashboards (../fleet.json, ../camera.json) from typed
// builders of the Grafana Foundation SDK, which check every field at compile time: the dashboards
// are code, reviewed as code, and the JSON is never edited by hand.
//
//	go run .          # rewrite the JSON files
//	go run . -check   # fail if they differ from what this program writes (CI)
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	check := flag.Bool("check", false, "compare with the files instead of writing them")
	dir := flag.String("dir", "..", "where the dashboards' JSON files are")
	flag.Parse()
	stale := 0
	for file, build := range map[string]func() *dashboard.DashboardBuilder{
		"fleet.json":  fleet,
		"camera.json": cameraDashboard,
	} {
		text, err := render(build())
		if err != nil {
			fail("%s: %v", file, err)
		}
		path := filepath.Join(*dir, file)
		if !*check {
			if err := os.WriteFile(path, text, 0o644); err != nil {
				fail("%v", err)
			}
			continue
		}
		committed, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(committed, text) {
			fmt.Fprintf(os.Stderr, "%s is not what gen writes: run `go run .` in %s\n", path, mustGetwd())
			stale++
		}
	}
	if stale > 0 {
		os.Exit(1)
	}
}

func render(builder *dashboard.DashboardBuilder) ([]byte, error) {
	built, err := builder.Build()
	if err != nil {
		return nil, err
	}
	text, err := json.MarshalIndent(built, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(text, '\n'), nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gen: "+format+"\n", args...)
	os.Exit(1)
}

func mustGetwd() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	return wd
}

// What every dashboard shares: a Prometheus picked by a variable, so one JSON file serves any
// Grafana, and the tag that links the dashboards to each other.
func base(uid, title, description string) *dashboard.DashboardBuilder {
	return dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(description).
		Tags([]string{"edge-autotuner"}).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Link(dashboard.NewDashboardLinkBuilder("Edge AutoTuner").
			Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"edge-autotuner"}).
			AsDropdown(true).
			IncludeVars(true).
			KeepTime(true)).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Prometheus").
			Type("prometheus"))
}

// labelVariable is a variable listing the values of a label of a series, refreshed with the time
// range (CameraTunings come and go).
func labelVariable(name, label, query string) *dashboard.QueryVariableBuilder {
	return dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Datasource(prometheusRef()).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
		Definition(query).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc)
}

func prometheusRef() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
}
