//go:build tools

// Package tools pins CoreDNS, the cluster DNS of the test node, built by
// ../controlplane/build.sh so that `go mod tidy` keeps its dependencies in go.sum.
package tools

import (
	_ "github.com/coredns/coredns"
)
