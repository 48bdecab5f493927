package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/lab"
)

// printStatus prints what `hgw-lab status` shows of the lab st.
func printStatus(ctx context.Context, w io.Writer, st lab.State) error {
	state := "starting"
	if st.Ready {
		state = "ready"
	}
	if !st.Alive() {
		state = "STALE: its process is gone; run `hgw-lab down`"
	}
	fmt.Fprintf(w, "Lab %s: %s, datapath %s, etcd %s (pid %d, up %s)\n\n",
		st.Prefix, state, st.Datapath, st.Etcd, st.PID, time.Since(st.Started).Round(time.Second))
	printNodes(w, st)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	printLeases(ctx, w, st)
	if st.Datapath == lab.DatapathStatic {
		return nil
	}
	if st.Internet != "" {
		fmt.Fprintf(w, "\nInternet: %s (%s), routes no pod subnet\n", st.Internet, lab.InternetIP)
	}
	printServices(w, st.Services)
	printAgents(ctx, w, st)
	return nil
}

// printNodes prints a line per node: its addresses, subnets, agent and
// pods.
func printNodes(w io.Writer, st lab.State) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tETH0\tPOD SUBNET\tAGENT\tPODS")
	for _, n := range st.Nodes {
		var pods []string
		for _, p := range st.PodsOf(n.Name) {
			pods = append(pods, fmt.Sprintf("%s=%s", strings.TrimPrefix(p.Name, st.Prefix+"-"), p.Addrs()))
		}
		agent := "-"
		if n.Agent != "" {
			agent = n.Agent + " (stopped)"
		}
		if n.AgentPID != 0 {
			agent = fmt.Sprintf("%s %d", n.Agent, n.AgentPID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Addrs(), n.Subnets(), agent, strings.Join(pods, " "))
	}
	tw.Flush()
}

// printLeases prints the leases in the lab's registry, or why they are
// not available.
func printLeases(ctx context.Context, w io.Writer, st lab.State) {
	if st.Registry == lab.RegistryKube {
		fmt.Fprintf(w, "\nLeases in Kubernetes Nodes (%s):\n", st.KubeAPI)
	} else {
		fmt.Fprintln(w, "\nLeases in etcd:")
	}
	leases, err := st.Leases(ctx)
	if err != nil {
		fmt.Fprintf(w, "  unavailable: %v\n", err)
	}
	for _, le := range leases {
		ttl := "reservation"
		if le.TTL > 0 {
			ttl = fmt.Sprintf("ttl %s", time.Duration(le.TTL)*time.Second)
		}
		if st.Registry == lab.RegistryKube {
			ttl = "vanishes with its Node"
		}
		fmt.Fprintf(w, "  %s = %s (%s)\n", le.Key, le.Value, ttl)
	}
}

// printServices prints the services kube-proxy's rules implement.
func printServices(w io.Writer, svcs []lab.ServicePort) {
	if len(svcs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nServices in kube-proxy's rules:")
	for _, s := range svcs {
		policy := ""
		if s.NodePort != 0 {
			policy = fmt.Sprintf(", NodePort %d (externalTrafficPolicy %s)", s.NodePort, map[bool]string{false: "Cluster", true: "Local"}[s.LocalOnly])
		}
		fmt.Fprintf(w, "  %s %s:%d/%s -> %v%s\n", s.Name, s.ClusterIP, s.Port, s.Protocol, s.Endpoints, policy)
	}
}

// printAgents prints every hgw-ebpf node's `hgw-ebpf status`, and where
// a flanneld node logs.
func printAgents(ctx context.Context, w io.Writer, st lab.State) {
	agent := filepath.Join(st.BinDir, "hgw-ebpf")
	for _, n := range st.Nodes {
		if n.Agent == lab.AgentFlanneld {
			fmt.Fprintf(w, "\n--- %s: runs flanneld (log: %s)\n", n.Name, n.AgentLog)
			continue
		}
		fmt.Fprintf(w, "\n--- %s: hgw-ebpf status --bpffs-root %s\n", n.Name, n.PinRoot)
		out, err := st.Output(ctx, n.Name, agent, "status", "--bpffs-root", n.PinRoot)
		fmt.Fprint(w, out)
		if err != nil {
			fmt.Fprintf(w, "(%v)\n", err)
		}
	}
}
