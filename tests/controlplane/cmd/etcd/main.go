// Command etcd is etcd's own server entry point, built from go.etcd.io/etcd/server/v3 at the
// version Kubernetes pins (the etcd repository's root module, which holds its main package,
// drags in etcdctl and etcdutl that the tests do not need).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
