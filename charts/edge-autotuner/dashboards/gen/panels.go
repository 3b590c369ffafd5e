package main

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// query is one PromQL expression of a panel and the legend of its series.
type query struct {
	expr   string
	legend string
}

func q(expr, legend string) query { return query{expr: expr, legend: legend} }

func target(query query) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().
		Datasource(prometheusRef()).
		Expr(query.expr).
		LegendFormat(query.legend)
}

// graph is a time series panel, half a row wide.
func graph(title, description, unit string, queries ...query) *timeseries.PanelBuilder {
	panel := timeseries.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(prometheusRef()).
		Unit(unit).
		Span(12).
		Height(8).
		Legend(common.NewVizLegendOptionsBuilder().
			DisplayMode(common.LegendDisplayModeList).
			Placement(common.LegendPlacementBottom).
			ShowLegend(true)).
		Tooltip(common.NewVizTooltipOptionsBuilder().
			Mode(common.TooltipDisplayModeMulti).
			Sort(common.SortOrderDescending))
	for _, query := range queries {
		panel.WithTarget(target(query).Range())
	}
	return panel
}

// number is a stat panel showing the latest value of each series, a quarter of a row wide.
func number(title, description, unit string, queries ...query) *stat.PanelBuilder {
	panel := stat.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(prometheusRef()).
		Unit(unit).
		Span(6).
		Height(5).
		GraphMode(common.BigValueGraphModeArea).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
	for _, query := range queries {
		panel.WithTarget(target(query).Instant())
	}
	return panel
}

// redBelow colours a panel red below `red` and green from it.
func redBelow(red float64) *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().
		Mode(dashboard.ThresholdsModeAbsolute).
		Steps([]dashboard.Threshold{
			{Value: nil, Color: "red"},
			{Value: cog.ToPtr(red), Color: "green"},
		})
}

func stackNormal() *common.StackingConfigBuilder {
	return common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)
}

// textName shows a stat's series name (its legend) instead of its value: for a 0/1 state.
func textName() common.BigValueTextMode { return common.BigValueTextModeName }
