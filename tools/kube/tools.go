//go:build tools

// Package kube pins the Kubernetes release whose kube-apiserver and
// kubectl the tests and the lab run (`make deps` builds them into
// bin/kube/). It is a module of its own, so that k8s.io/kubernetes never
// enters the main module's requirements and `go test ./...` of the main
// module does not descend here. k8s.io/kubernetes requires its staging
// modules at v0.0.0; go.mod replaces each with the same release (v0.37.2).
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
