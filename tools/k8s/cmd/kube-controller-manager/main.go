// kube-controller-manager, as upstream's cmd/kube-controller-manager builds
// it: the tests run its deployment, replicaset, statefulset and daemonset
// controllers so workloads get ReplicaSets, Pods and status.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
