//go:build tools

// Package tools pins the S3 server the tests store datasets in (gofakes3: the S3 REST API over
// memory, built by ../controlplane/build.sh) so that `go mod tidy` keeps its dependencies in
// go.sum.
package tools

import (
	_ "github.com/johannesboyne/gofakes3/cmd/gofakes3"
)
