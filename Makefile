# hgw-ebpf — the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (`make deps`), on a fresh Debian 12 machine.

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
CNI_BIN      := $(BIN)/cni
CNI_VERSION  := v1.9.1
VERSION      ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X main.version=$(VERSION)
# Debian packages the build, the tests, the lab and the benchmarks use.
APT_PACKAGES := clang-19 llvm-19 libbpf-dev bpftool iproute2 iputils-ping traceroute \
                iperf3 sockperf tcpdump iptables nftables conntrack procps util-linux curl
GENERATED    := internal/datapath/hgw_bpfel.go internal/datapath/hgw_bpfel.o
GO_TEST_FLAGS ?= -count=1 -timeout 40m
# A real kube-apiserver and kubectl for the Kubernetes subnet manager's tests
# and `hgw-lab up --registry kube`, built from tools/kube (its own module:
# k8s.io/kubernetes stays out of the main module). Debian has no
# kube-apiserver package and setup-envtest cannot download here, but the Go
# module proxy serves the release. The version variables are set as
# Kubernetes' own build sets them, so kubectl's version skew check is happy.
KUBE_BIN     := $(BIN)/kube
KUBE_VERSION := v1.37.2
KUBE_VERSION_VARS := gitVersion=$(KUBE_VERSION) gitMajor=1 gitMinor=37 gitTreeState=clean buildDate=1970-01-01T00:00:00Z
KUBE_LDFLAGS := -s -w $(foreach v,$(KUBE_VERSION_VARS),-X k8s.io/component-base/version.$(v) -X k8s.io/client-go/pkg/version.$(v))

.PHONY: all deps generate check-generated build test demo bench clean lint

all: build

## deps: install missing Debian packages, the CNI plugins, kube-apiserver and kubectl (no-op when present)
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@for p in main/bridge ipam/host-local meta/bandwidth; do \
	  name=$${p#*/}; \
	  if [ ! -x $(CNI_BIN)/$$name ]; then \
	    echo "deps: installing CNI plugin $$name $(CNI_VERSION) into $(CNI_BIN)"; \
	    GOBIN=$(CNI_BIN) $(GO) install github.com/containernetworking/plugins/plugins/$$p@$(CNI_VERSION); \
	  fi; \
	done
	@if [ ! -x $(KUBE_BIN)/kube-apiserver ] || [ ! -x $(KUBE_BIN)/kubectl ]; then \
	  echo "deps: building kube-apiserver and kubectl $(KUBE_VERSION) into $(KUBE_BIN) (once: 10-20 minutes)"; \
	  cd tools/kube && $(GO) build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_BIN)/ \
	    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl; \
	fi

## generate: compile bpf/*.c with the pinned clang-19 and regenerate the Go bindings
generate:
	$(GO) generate ./internal/datapath/

## check-generated: regenerate and fail if the committed bpf2go output differs
check-generated: generate
	@if ! git diff --quiet -- $(GENERATED) || [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then \
	  echo "check-generated: committed bpf2go output is stale; run 'make generate' and commit:"; \
	  git status --short -- $(GENERATED); exit 1; \
	fi

## build: the agent, the lab and the chained CNI plugin into bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/hgw-ebpf ./cmd/hgw-ebpf
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/hgw-lab ./cmd/hgw-lab
	$(GO) build -o $(BIN)/hgw-cni ./cmd/hgw-cni

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

## test: every test, as root (namespaces, BPF); CI runs exactly this
test: deps check-generated lint build
	HGW_BIN=$(BIN) CNI_PATH=$(CNI_BIN) $(GO) test $(GO_TEST_FLAGS) ./...

## demo: a 3-node dual-stack lab cluster with real traffic on the fast path
demo: deps build
	$(BIN)/hgw-lab demo --dual-stack --bin $(BIN)

## bench: the dataplane benchmark (~18 min) and the control-plane one (~30 s), into bench-out/
bench: deps build
	$(BIN)/hgw-lab bench --bin $(BIN) $(BENCH_FLAGS)
	$(BIN)/hgw-lab bench controlplane --bin $(BIN) $(BENCH_CP_FLAGS)

clean:
	rm -rf $(BIN)
