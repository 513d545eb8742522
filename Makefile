# tabby — build, test and demo. Every target installs what it needs itself.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKG := github.com/tabby-net/tabby
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X $(PKG)/internal/version.Version=$(VERSION)
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN_DIR)/staticcheck
STATICCHECK_VERSION := v0.8.2
# Static binaries everywhere: the VM guest needs them, and one setting for every build
# lets the host, the tests and the VM share one build cache.
export CGO_ENABLED := 0

# Debian packages the tests, the lab and the demo use (gcc and libc6-dev: the race
# detector needs cgo; etcd-client and openssl: configs/etcd's scripts, which the secure
# etcd tests run).
APT_PACKAGES := iproute2 iptables ipset nftables bird2 iputils-ping etcd-server etcd-client openssl iperf3 tcpdump procps util-linux systemd gcc libc6-dev
TEST_TIMEOUT ?= 14m

.PHONY: all build deps test test-unit lint demo clean fmt

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# Installs the Debian packages given as $(1) only when one of them is missing, so a second
# run is quick and makes no network access.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))
	@# bird2's package starts a system-wide bird; the tests start their own.
	@systemctl disable --now bird >/dev/null 2>&1 || true
	$(GO) mod download

$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# The real calicoctl v3.30.1, built from Calico's Go module through the module proxy and
# cached (scripts/calicoctl.sh): the Calico interoperability suite (lab, TestCalicoInterop)
# runs it. A second run is instant.
CALICOCTL_CACHE ?= /var/cache/tabby-calicoctl
CALICOCTL := $(CALICOCTL_CACHE)/calicoctl-v3.30.1

.PHONY: calicoctl
calicoctl:
	GO='$(GO)' CALICOCTL_CACHE='$(CALICOCTL_CACHE)' ./scripts/calicoctl.sh

# Every test: unit, etcd, root network-namespace and end-to-end tests (with the real
# calicoctl); the short ones again under the race detector; the VM tests; the rollout
# suite (Debian hosts under systemd).
test: deps lint build check-ansible calicoctl
	TABBY_CALICOCTL='$(CALICOCTL)' $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) test-race
	$(MAKE) test-vm
	$(MAKE) test-rollout

# The -short tests under the race detector (about 2 minutes on 2 cores): the daemon's
# subsystems, the syncer and the BGP speaker run in goroutines of their own. The race
# detector's runtime is C, hence cgo here alone.
.PHONY: test-race
test-race: deps
	CGO_ENABLED=1 $(GO) test -race -short -count=1 -timeout $(TEST_TIMEOUT) ./...

# VM tests (lab/vm/run.sh): tabby's code inside qemu on Debian's stock kernel, which has the
# ipip module these machines' kernel lacks. Downloads and the unpacked kernel are cached in
# VM_CACHE; the guest runs every line of VM_PLAN; VM_ACCEL=kvm only where the CPU shows vmx/svm.
# deps: the guest gets its ip, iptables, ipset and bird from this host.
VM_CACHE ?= /var/cache/tabby-vm
VM_FLAVOUR ?= cloud
VM_ACCEL ?= tcg
VM_PLAN ?= lab/vm/plan
VM_TIMEOUT ?= 300
VM_STEP_TIMEOUT ?= 240

.PHONY: test-vm
test-vm: deps
	GO='$(GO)' LDFLAGS='$(LDFLAGS)' VM_CACHE='$(VM_CACHE)' VM_FLAVOUR='$(VM_FLAVOUR)' \
	  VM_ACCEL='$(VM_ACCEL)' VM_PLAN='$(VM_PLAN)' VM_TIMEOUT='$(VM_TIMEOUT)' \
	  VM_STEP_TIMEOUT='$(VM_STEP_TIMEOUT)' ./lab/vm/run.sh

# Syntax-checks the Ansible role and renders its config template for the example inventory
# (no host is contacted); installs Debian's ansible-core if needed.
.PHONY: check-ansible
check-ansible:
	./configs/ansible/tests/check.sh

# The Debian package: dist/tabby_<version>_amd64.deb (packaging/deb/build.sh), checked
# with lintian. The version comes from git describe (packaging/deb/version.sh); binaries
# are stripped and built with -trimpath, so a tree builds the same package twice, and a
# package already built and checked is taken from DEB_CACHE.
# Evaluated once, so that a tree edited while make runs cannot change it half-way.
ifndef DEB_VERSION
DEB_VERSION := $(shell ./packaging/deb/version.sh 2>/dev/null || echo 0.0+unknown)
endif
DIST := dist
DEB_CACHE ?= /var/cache/tabby-deb
DEB_APT_PACKAGES := dpkg-dev lintian

.PHONY: deb
deb:
	$(call apt_install,$(DEB_APT_PACKAGES))
	@mkdir -p $(BIN)/deb
	$(GO) build -trimpath -ldflags '-s -w -X $(PKG)/internal/version.Version=$(DEB_VERSION)' \
	  -o $(BIN)/deb/ ./cmd/tabbyd ./cmd/tabbyctl ./cmd/tabby-cni
	BIN_DIR=$(BIN)/deb VERSION='$(DEB_VERSION)' OUT_DIR=$(DIST) DEB_CACHE='$(DEB_CACHE)' ./packaging/deb/build.sh

# The rollout suite (lab/rollout): Debian hosts booted with systemd (systemd-nspawn) in the
# lab's namespaces, tabby installed from the package by the Ansible role over SSH, tabbyd
# under its unit, a rolling upgrade to two later versions of the same tree. The hosts' root
# file system is built once (debootstrap) and cached in ROOTFS_CACHE.
ROLLOUT_APT_PACKAGES := debootstrap systemd-container ansible-core openssh-client etcd-server etcd-client openssl iputils-ping
ROOTFS_CACHE ?= /var/cache/tabby-rootfs

.PHONY: test-rollout
test-rollout: deb
	$(call apt_install,$(ROLLOUT_APT_PACKAGES))
	@for n in 1 2; do \
	  v='$(DEB_VERSION)'.$$n; mkdir -p $(BIN)/deb-$$n; \
	  $(GO) build -trimpath -ldflags "-s -w -X $(PKG)/internal/version.Version=$$v" \
	    -o $(BIN)/deb-$$n/ ./cmd/tabbyd ./cmd/tabbyctl ./cmd/tabby-cni && \
	  BIN_DIR=$(BIN)/deb-$$n VERSION=$$v OUT_DIR=$(BIN)/upgrade LINTIAN=0 DEB_CACHE= ./packaging/deb/build.sh >/dev/null || exit 1; \
	done
	rootfs=$$(ROOTFS_CACHE='$(ROOTFS_CACHE)' ./lab/rollout/rootfs.sh) && \
	TABBY_ROLLOUT_ROOTFS=$$rootfs \
	TABBY_ROLLOUT_DEB=$(CURDIR)/$(DIST)/tabby_$(DEB_VERSION)_amd64.deb \
	TABBY_ROLLOUT_DEB_NEXT=$(CURDIR)/$(BIN)/upgrade/tabby_$(DEB_VERSION).1_amd64.deb \
	TABBY_ROLLOUT_DEB_THIRD=$(CURDIR)/$(BIN)/upgrade/tabby_$(DEB_VERSION).2_amd64.deb \
	  $(GO) test -count=1 -timeout 30m -v -run TestRollout ./lab/rollout/

# Unit tests only (no root needed for most).
test-unit:
	$(GO) test -count=1 -short ./...

demo: deps build
	./scripts/demo.sh

# Benchmarks of issue 8 (bench/run.sh): cold sync, start-up at scale, propagation, join
# cost, memory, BGP mesh, datapath and restart, each figure next to a reference measured in
# the same run, as root in throwaway network namespaces; about 8 minutes. QUICK=1 for
# fewer repetitions.
.PHONY: bench
bench: deps build
	GO='$(GO)' QUICK='$(QUICK)' ./bench/run.sh

clean:
	rm -rf $(BIN) $(DIST)
