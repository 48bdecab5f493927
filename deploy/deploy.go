// Package deploy holds the files that run hgw-ebpf on nodes: the systemd
// unit and the Kubernetes manifest, which the lab applies and the tests
// check against a real kube-apiserver.
package deploy

import (
	_ "embed"
)

// KubeManifest is kube-hgw-ebpf.yaml: namespace, service account, RBAC,
// ConfigMap and DaemonSet.
//
//go:embed kube-hgw-ebpf.yaml
var KubeManifest []byte

// The agent's identity in KubeManifest.
const (
	Namespace      = "kube-hgw-ebpf"
	ServiceAccount = "hgw-ebpf"
)

// ServiceAccountUser is the user name and groups Kubernetes gives the
// agent's service account, which the manifest's ClusterRoleBinding binds.
func ServiceAccountUser() (name string, groups []string) {
	return "system:serviceaccount:" + Namespace + ":" + ServiceAccount,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace}
}
