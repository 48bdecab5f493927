package kubeapi_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi"
	"github.com/hgw-ebpf/hgw-ebpf/internal/kubeapi/kubeapitest"
)

func TestMain(m *testing.M) { os.Exit(kubeapitest.Main(m)) }

// The server answers its admin over the client this process builds, and
// kubectl inside the namespace; a stop and a start keep its objects and
// its users' tokens; another user gets only what RBAC gives it (nothing).
func TestServer(t *testing.T) {
	srv := kubeapitest.Shared(t)
	kubectl := kubeapitest.Require(t, "kubectl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := corev1client.NewForConfig(srv.RestConfig(kubeapi.Admin))
	if err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "kubeapi-test"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.7.0/24"}}
	if _, err := admin.Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	t.Cleanup(func() { admin.Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })

	out, err := srv.Kubectl(ctx, kubectl, nil, "get", "node", node.Name, "-o", "jsonpath={.spec.podCIDR}")
	if err != nil || string(out) != "10.244.7.0/24" {
		t.Fatalf("kubectl get node: %q, %v", out, err)
	}
	if out, err := srv.Kubectl(ctx, kubectl, nil, "version"); err != nil || !strings.Contains(string(out), "Server Version: v1.37.2") {
		t.Errorf("kubectl version: %s, %v", out, err)
	}

	agent, err := corev1client.NewForConfig(srv.RestConfig(kubeapitest.Agent.Name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Nodes().Get(ctx, node.Name, metav1.GetOptions{}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("agent without a role read a node: err %v, want forbidden", err)
	}

	pid := srv.PID()
	srv.Stop()
	if _, err := admin.Nodes().Get(ctx, node.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("stopped server answered")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("start again: %v", err)
	}
	if srv.PID() == pid || srv.PID() == 0 {
		t.Errorf("pid %d after restart, was %d", srv.PID(), pid)
	}
	got, err := admin.Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil || got.Spec.PodCIDR != "10.244.7.0/24" {
		t.Fatalf("node after restart: %+v, %v", got, err)
	}
}
