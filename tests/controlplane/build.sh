#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl) and helm from the Go module proxy, pinned by the go.mod/go.sum next to this script
# and in ../helm. Idempotent: binaries are cached outside the repo under a key made of the
# pinned versions, so only the first build on a machine pays (about 30 min on 2 cores).
#
# Also the S3 server the tests keep datasets in (gofakes3, pinned by ../s3/go.mod; its binary is
# named with its version, so a bump builds a new one), and the real node of the end-to-end test:
# the kubelet and kube-proxy of the same Kubernetes version, CoreDNS (pinned by ../coredns/go.mod,
# named with its version) and the pause container's program (Kubernetes' own pause.c, static).
#
# Prints the bin directory on stdout. Usage: build.sh [component...]
#   components: etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm s3
#               kubelet kube-proxy coredns pause gitops-health
#   (default: all)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The version a go.mod requires of a module, whether on a `require` line or inside a block.
required() { grep -Eo "^(require )?[[:space:]]*$1 v[^ ]+" "$2" | head -n1 | awk '{print $NF}'; }
k8s_version=$(required k8s.io/kubernetes "$here/go.mod")
etcd_version=$(required go.etcd.io/etcd/server/v3 "$here/go.mod")
helm_version=$(required helm.sh/helm/v3 "$here/../helm/go.mod")
s3_version=$(required github.com/johannesboyne/gofakes3 "$here/../s3/go.mod")
coredns_version=$(required github.com/coredns/coredns "$here/../coredns/go.mod")
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ] || [ -z "$helm_version" ] || [ -z "$s3_version" ] \
  || [ -z "$coredns_version" ]; then
  echo "cannot read the pinned versions from go.mod" >&2; exit 1
fi
# Bump when the way the binaries are built changes, so that cached ones are not reused.
recipe=2
cache_root=${EDGE_AUTOTUNER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-autotuner}
bin="$cache_root/controlplane/k8s-$k8s_version-etcd-$etcd_version-helm-$helm_version-r$recipe/bin"
mkdir -p "$bin"

components=("$@")
if [ ${#components[@]} -eq 0 ]; then
  components=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm s3
              kubelet kube-proxy coredns pause gitops-health)
fi

# Kubernetes' own build flags: no cgo (static binaries), trimmed paths, no debug info, and the
# version stamped in as hack/lib/version.sh does (without it the binaries report
# v0.0.0-master, which kubectl and helm cannot parse).
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
etcd_ldflags="-s -w"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"

build() { # name dir package ldflags
  local name=$1 dir=$2 pkg=$3 ldflags=$4
  if [ -x "$bin/$name" ]; then return 0; fi
  echo "building $name ($pkg) into $bin" >&2
  local start=$SECONDS
  (cd "$dir" && go build -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name" # atomic: an interrupted build leaves no half binary behind
  echo "built $name in $((SECONDS - start)) s" >&2
}

# The sandbox container of every pod: Kubernetes' pause.c from the module cache, static, so its
# image is that one file.
build_pause() {
  if [ -x "$bin/pause" ]; then return 0; fi
  local src
  src=$(cd "$here" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  gcc -Os -static -DVERSION="$k8s_version" -o "$bin/pause.tmp" "$src"
  strip "$bin/pause.tmp"
  mv "$bin/pause.tmp" "$bin/pause"
}

for c in "${components[@]}"; do
  case "$c" in
    etcd) build etcd "$here" ./cmd/etcd "$etcd_ldflags" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy)
      build "$c" "$here" "k8s.io/kubernetes/cmd/$c" "$k8s_ldflags" ;;
    helm) build helm "$here/../helm" helm.sh/helm/v3/cmd/helm "$helm_ldflags" ;;
    s3) build "gofakes3-$s3_version" "$here/../s3" github.com/johannesboyne/gofakes3/cmd/gofakes3 "-s -w" ;;
    coredns|coredns-*) build "coredns-$coredns_version" "$here/../coredns" github.com/coredns/coredns "-s -w" ;;
    pause) build_pause ;;
    gitops-health|gitops-health-*)
      gitops_hash=$(cat "$here/../gitops/main.go" "$here/../gitops/go.mod" "$here/../gitops/go.sum" | sha256sum | cut -c1-12)
      build "gitops-health-$gitops_hash" "$here/../gitops" . "-s -w"
      ln -sfn "gitops-health-$gitops_hash" "$bin/gitops-health" ;;
    *) echo "unknown component: $c" >&2; exit 2 ;;
  esac
done
echo "$bin"
