package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/hgw-ebpf/hgw-ebpf/internal/registry"
)

// etcdFlags are flanneld's etcd flags, shared by run and cleanup.
type etcdFlags struct {
	endpoints string
	prefix    string
	opts      registry.ClientOptions
}

func (e *etcdFlags) register(f *pflag.FlagSet) {
	f.StringVar(&e.endpoints, "etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd endpoints")
	f.StringVar(&e.prefix, "etcd-prefix", registry.DefaultPrefix, "etcd prefix of the network config and subnet leases")
	f.StringVar(&e.opts.CAFile, "etcd-cafile", "", "CA certificate to verify etcd's server certificate")
	f.StringVar(&e.opts.CertFile, "etcd-certfile", "", "client certificate for etcd")
	f.StringVar(&e.opts.KeyFile, "etcd-keyfile", "", "key of the etcd client certificate")
	f.StringVar(&e.opts.Username, "etcd-username", "", "etcd user name")
	f.StringVar(&e.opts.Password, "etcd-password", "", "etcd password")
}

// client returns the client options with the endpoints parsed.
func (e *etcdFlags) client() (registry.ClientOptions, error) {
	o := e.opts
	o.Endpoints = splitList(e.endpoints)
	if len(o.Endpoints) == 0 {
		return o, fmt.Errorf("--etcd-endpoints is empty")
	}
	return o, nil
}
