package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// client speaks the core/v1 API the agent needs: Nodes and one Pod. It
// is a REST client over a scheme of core/v1 alone; client-go's typed
// clientset registers every API group, which made hgw-ebpf 19 MB larger.
type client struct {
	rest   *rest.RESTClient
	params runtime.ParameterCodec
}

func newClient(rc *rest.Config) (*client, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	rc = rest.CopyConfig(rc)
	rc.APIPath = "/api"
	rc.GroupVersion = &corev1.SchemeGroupVersion
	rc.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	// Protobuf, as Kubernetes' own components speak to the API server:
	// listing thousands of Nodes decodes several times faster than JSON.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if rc.UserAgent == "" {
		rc.UserAgent = "hgw-ebpf"
	}
	r, err := rest.RESTClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("Kubernetes client for %s: %w", rc.Host, err)
	}
	return &client{rest: r, params: runtime.NewParameterCodec(scheme)}, nil
}

func (c *client) listNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	var l corev1.NodeList
	err := c.rest.Get().Resource("nodes").VersionedParams(&opts, c.params).Do(ctx).Into(&l)
	return &l, err
}

func (c *client) watchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rest.Get().Resource("nodes").VersionedParams(&opts, c.params).Watch(ctx)
}

func (c *client) node(ctx context.Context, name string) (*corev1.Node, error) {
	var n corev1.Node
	err := c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(&n)
	return &n, err
}

// patchNodeStatus patches a Node through its status subresource.
func (c *client) patchNodeStatus(ctx context.Context, name string, pt types.PatchType, data []byte) error {
	return c.rest.Patch(pt).Resource("nodes").Name(name).SubResource("status").Body(data).Do(ctx).Error()
}

func (c *client) pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := c.rest.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(&p)
	return &p, err
}
