# tp's build, test bed and checks. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := build

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TAG := $(shell echo '$(VERSION)' | tr -c 'A-Za-z0-9_.\n-' '-')
PKG := github.com/tp-run/tp
STRIP ?= -s -w
LDFLAGS := $(STRIP) -X $(PKG)/internal/version.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'
export KUBECONFIG ?= /var/lib/tp-cluster/kubeconfig
STATICCHECK_VERSION := v0.8.2
CACHE := $(CURDIR)/.cache

.PHONY: help build image image-push registry-up deps cluster-up cluster-down cluster-load test unit unit-windows vet-darwin fuzz scripts e2e e2e-run lint generate demo bench bench-faults clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/tp for linux/amd64 and cross-compile windows/amd64 and darwin/arm64
	GOOS=linux GOARCH=amd64 $(GOBUILD) -o bin/tp ./cmd/tp
	GOOS=windows GOARCH=amd64 $(GOBUILD) -o bin/tp-windows-amd64.exe ./cmd/tp
	GOOS=darwin GOARCH=arm64 $(GOBUILD) -o bin/tp-darwin-arm64 ./cmd/tp

# image builds one FROM-scratch image from static binaries; $(1)=tag(s) $(2)=package(s), each binary named
# after its directory $(3)=build context's name $(4)=Dockerfile $(5)=more files for the build context (optional)
# $(6)=a binary to rename in the context: FROM TO (optional)
define image
	rm -rf $(CACHE)/image/$(3) && mkdir -p $(CACHE)/image/$(3)
	GOOS=linux GOARCH=amd64 $(GOBUILD) -o $(CACHE)/image/$(3)/ $(2)
	$(if $(6),mv $(CACHE)/image/$(3)/$(word 1,$(6)) $(CACHE)/image/$(3)/$(word 2,$(6)))
	cp $(4) $(CACHE)/image/$(3)/Dockerfile
	$(if $(5),cp $(5) $(CACHE)/image/$(3)/)
	docker build -q $(foreach t,$(1),-t $(t)) $(CACHE)/image/$(3) >/dev/null
endef

image: deps ## build the images: tp:<version> (+ tp:dev), tp-echo:dev, tp-probe:dev, tp-shop:dev, tp-debian:dev and tp-postgres:dev (debootstrap, cached)
	$(call image,tp:$(TAG) tp:dev,$(TP_IMAGE_PACKAGES),tp,Dockerfile,$(CA_BUNDLE),tp-image tp)
	$(call image,tp-echo:dev,./examples/echo,echo,examples/echo/Dockerfile)
	$(call image,tp-probe:dev,./test/probe,probe,test/probe/Dockerfile)
	$(call image,tp-shop:dev,./examples/shop,shop,examples/shop/Dockerfile)
	hack/images/debian.sh
	hack/images/postgres.sh
	@echo "images: tp:$(TAG) tp:dev tp-echo:dev tp-probe:dev tp-shop:dev tp-debian:dev tp-postgres:dev"

# tp's image: /tp (cmd/tp-image) execs one static binary per role beside it, so
# that no role pays at start for another's dependencies (cmd/tp/roles).
TP_IMAGE_PACKAGES := ./cmd/tp-image ./cmd/tp-daemon ./cmd/tp-manager ./cmd/tp-agent ./cmd/tp-volumes

# The host's (Debian's ca-certificates) CA bundle goes into tp's FROM-scratch
# image, at the path Go's crypto/x509 reads on Linux, so that the manager and
# the daemon verify TLS endpoints (an API server behind a public CA, a proxy).
CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt

# image-push tags tp:<version> as REGISTRY/tp:<version> and pushes it, for a
# cluster that cannot use this machine's images: then
# `tp connect --image-registry REGISTRY` (or `tp helm install --image-registry
# REGISTRY`). The test bed's own registry is 127.0.0.1:5000 (make registry-up).
REGISTRY ?=
image-push: ## build tp:<version> and push it as REGISTRY/tp:<version>: make image-push REGISTRY=host[:port][/path]
	@[ -n '$(REGISTRY)' ] || { echo 'usage: make image-push REGISTRY=host[:port][/path], e.g. ghcr.io/me or 127.0.0.1:5000 (make registry-up)' >&2; exit 2; }
	$(call image,tp:$(TAG),$(TP_IMAGE_PACKAGES),tp,Dockerfile,$(CA_BUNDLE),tp-image tp)
	hack/image-push.sh '$(REGISTRY)' tp:$(TAG)

registry-up: ## start the test bed's image registry on 127.0.0.1:5000 (Debian's docker-registry; idempotent)
	hack/registry.sh up

deps: ## install Debian packages and start dockerd when needed (idempotent)
	@hack/install-deps.sh

cluster-up: deps ## bring up the local Kubernetes cluster (idempotent); kubeconfig at /var/lib/tp-cluster/kubeconfig
	hack/cluster/up.sh

cluster-down: ## remove the local cluster: processes, iptables rules, bridges, mounts, data
	hack/cluster/down.sh

cluster-load: ## load images into the cluster: make cluster-load IMAGES="tp:dev tp-echo:dev"
	hack/cluster/load.sh $(IMAGES)

test: unit unit-windows vet-darwin fuzz scripts e2e ## all tests: unit tests with -race, the host side's under wine and vetted for macOS, a short fuzz run, the test bed scripts' tests, then e2e tests on the local cluster

unit: ## unit tests with the race detector
	go test -race -count=1 ./...

# The host-side packages (hack/host-packages.txt) are what the macOS and
# Windows CLIs are built from.
HOST_PACKAGES = $(shell grep -v '^\#' hack/host-packages.txt)

unit-windows: ## the host-side packages' unit tests as windows/amd64 binaries under wine (installs wine64 when missing)
	@hack/wine-test.sh

vet-darwin: ## go vet the host-side packages (hack/host-packages.txt) for darwin/arm64, as bin/tp-darwin-arm64 is built
	GOOS=darwin GOARCH=arm64 go vet $(HOST_PACKAGES)

# fuzz runs every fuzz target (package:Target) for FUZZTIME, one after
# another, with FUZZPARALLEL workers; docs/fuzzing.md has what each asserts.
# A longer campaign: make fuzz FUZZTIME=30m. Crashers land in the package's
# testdata/fuzz/<Target>/, where `go test` replays them from then on.
# hack/fuzz.sh runs a target again once when Go's coordinator fails it at the
# deadline without a crasher (go.dev/issue/75804).
FUZZTIME ?= 10s
FUZZPARALLEL ?= 1
FUZZ_TARGETS := ./tunnel:FuzzFrameCodec ./tunnel:FuzzServerStream ./tunnel:FuzzDialerStream \
	./daemoncontainer/dns:FuzzServeDNS \
	./agent:FuzzHTTPRoute ./daemoncontainer/kubeconfig:FuzzForContainer
fuzz: ## run each fuzz target for FUZZTIME (default 10s), one after another
	@set -e; for t in $(FUZZ_TARGETS); do \
		hack/fuzz.sh $${t%%:*} $${t#*:} $(FUZZTIME) $(FUZZPARALLEL); \
	done

scripts: ## tests of the test bed's shell scripts (root; each in a mount namespace of its own)
	hack/cluster/test-netns.sh

e2e: build cluster-up image ## end-to-end tests on the real local cluster and Docker engine
	go test -tags docker -count=1 -v -run 'TestPlugin$$' ./volumes/
	hack/cluster/load.sh tp:$(TAG) tp-echo:dev tp-probe:dev tp-shop:dev tp-postgres:dev
	TP_BIN=$(CURDIR)/bin/tp go test -tags e2e -count=1 -v -timeout 40m ./test/e2e/...

# e2e-run runs some e2e tests (RUN=regexp) against the cluster that is already
# up, without `cluster-up`: for a second checkout (git worktree) whose up.sh
# would restart the cluster. Runs on one machine wait for each other (flock),
# since they share the cluster, the manager in namespace tp and Docker.
RUN ?= .
e2e-run: ## e2e tests matching RUN=regexp on the running cluster (serialized across checkouts)
	# A fresh version per run, so that the manager restarts with this checkout's image.
	flock -o /tmp/tp-e2e.lock $(MAKE) --no-print-directory e2e-run-locked RUN='$(RUN)' VERSION=$(VERSION)-run$$(date +%s)

.PHONY: e2e-run-locked
e2e-run-locked: build image
	hack/cluster/load.sh tp:$(TAG) tp-echo:dev tp-probe:dev tp-shop:dev tp-postgres:dev
	TP_BIN=$(CURDIR)/bin/tp go test -tags e2e -count=1 -v -timeout 40m -run '$(RUN)' ./test/e2e/...

lint: ## gofmt, go vet and staticcheck (pinned)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt -w these: $$out"; exit 1; fi
	go vet ./...
	go vet -tags e2e ./test/...
	go vet -tags docker ./volumes/...
	GOBIN=$(CACHE)/bin go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(CACHE)/bin/staticcheck ./...

generate: ## regenerate protobuf code (byte for byte reproducible)
	hack/generate.sh

demo: build cluster-up image ## fresh machine to tp's main job: cluster, example app, connect, intercept
	hack/demo.sh

bench: build cluster-up image ## measure tp against kubectl port-forward on the local cluster (table + bench-results.json)
	hack/cluster/load.sh tp:$(TAG) tp-echo:dev tp-probe:dev tp-shop:dev tp-postgres:dev
	go run ./test/bench -tp bin/tp -out bench-results.json $(BENCH_FLAGS)

# bench-faults runs the e2e fault suite (TestFault*, serialized like e2e-run)
# and prints its recovery table, also when a fault test failed (the exit status
# is the suite's).
bench-faults: ## the fault suite's recovery table: seconds to recovery and failed requests per fault (bench-faults.jsonl)
	rm -f $(CURDIR)/bench-faults.jsonl
	status=0; TP_FAULTS_OUT=$(CURDIR)/bench-faults.jsonl $(MAKE) --no-print-directory e2e-run RUN='^TestFault' || status=$$?; \
		go run ./test/bench -faults $(CURDIR)/bench-faults.jsonl; exit $$status

clean: ## remove build outputs (keeps the cluster build cache in .cache/cluster)
	rm -rf bin $(CACHE)/image
