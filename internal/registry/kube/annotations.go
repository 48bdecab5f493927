package kube

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultAnnotationPrefix is flanneld's --kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// annotations are the Node annotation keys flanneld reads and writes,
// under one prefix.
type annotations struct {
	prefix           string // with its separator: "flannel.alpha.coreos.com/"
	managed          string // "true" on a node whose subnet manager is Kubernetes
	backendType      string
	backendData      string
	backendV6Data    string
	publicIP         string
	publicIPv6       string
	publicIPOverride string // an operator's public IP, published instead of the node's
	publicIPv6Over   string
}

// prefixPattern is flanneld's check of the prefix: a DNS-like name, one
// slash, and an optional word ending in "-".
var prefixPattern = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// newAnnotations builds the keys as flanneld does: a prefix without a
// slash gets "/" ("example.com" -> "example.com/backend-type"), one with a
// slash and a word gets "-" ("example.com/x" -> "example.com/x-backend-type").
func newAnnotations(prefix string) (annotations, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return annotations{}, fmt.Errorf("--kube-annotation-prefix %q: at most one slash", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixPattern.MatchString(p) {
		return annotations{}, fmt.Errorf("--kube-annotation-prefix %q: want a DNS name, optionally followed by /<word> (lowercase letters, digits, '-', '_', '.')", prefix)
	}
	return annotations{
		prefix:           p,
		managed:          p + "kube-subnet-manager",
		backendType:      p + "backend-type",
		backendData:      p + "backend-data",
		backendV6Data:    p + "backend-v6-data",
		publicIP:         p + "public-ip",
		publicIPv6:       p + "public-ipv6",
		publicIPOverride: p + "public-ip-overwrite",
		publicIPv6Over:   p + "public-ipv6-overwrite",
	}, nil
}

// ours is every key the agent writes, for Release.
func (a annotations) ours() []string {
	return []string{a.managed, a.backendType, a.backendData, a.backendV6Data, a.publicIP, a.publicIPv6}
}
