package main

import (
	"log/slog"
	"os"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry/kube"
)

// kubeFlags are flanneld's flags of its Kubernetes subnet manager, shared
// by run and cleanup.
type kubeFlags struct {
	enabled bool
	opts    kube.Options
}

func (k *kubeFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&k.enabled, "kube-subnet-mgr", false,
		"as flanneld: take the node's subnet from its Kubernetes Node (spec.podCIDR) and publish the lease in the Node's annotations, "+
			"instead of etcd; the Node is $NODE_NAME (else the node of the pod $POD_NAMESPACE/$POD_NAME)")
	f.StringVar(&k.opts.Kubeconfig, "kubeconfig-file", "", "kubeconfig for --kube-subnet-mgr (default: the in-cluster config)")
	f.StringVar(&k.opts.APIURL, "kube-api-url", "", "Kubernetes API server URL for --kube-subnet-mgr (default: the kubeconfig's, or in-cluster)")
	f.StringVar(&k.opts.AnnotationPrefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix,
		`prefix of the Node annotations with --kube-subnet-mgr; at most one "/", otherwise one is appended`)
	f.StringVar(&k.opts.NetConfPath, "net-config-path", kube.DefaultNetConfPath,
		"network config for --kube-subnet-mgr: the JSON etcd's <etcd-prefix>/config holds")
	f.BoolVar(&k.opts.SetNodeNetworkUnavailable, "set-node-network-unavailable", true,
		"with --kube-subnet-mgr, set the Node's NetworkUnavailable condition to False once the node routes its peers")
}

// options are the Kubernetes subnet manager's options, nil without
// --kube-subnet-mgr. The node's name comes from the environment, as
// flanneld takes it; client-go's own log lines go to log.
func (k *kubeFlags) options(log *slog.Logger) *kube.Options {
	if !k.enabled {
		return nil
	}
	o := k.opts
	o.NodeName, o.PodName, o.PodNamespace = os.Getenv("NODE_NAME"), os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	klog.SetSlogLogger(log.With("component", "client-go"))
	return &o
}
