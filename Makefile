# keelson: build, test, benchmark, run a node. Targets per CONTRACTS.md ("Makefile").
#
#   make build    debug build of every binary
#   make release  release build of every binary
#   make test     exactly what CI (.ci/run) runs: fmt, clippy, build, tests
#   make bench    release build, then keelson-bench and keelson-server-bench (prints figures,
#                 asserts nothing about time)
#   make install  binaries to $(PREFIX)/bin, systemd units to /etc/systemd/system
#   make up       (root) release build, start keelson-server and keelson-runtime in the background
#   make down     stop what `make up` started

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
RELEASE_DIR := $(CURDIR)/target/release

# Product binaries (CONTRACTS.md); those not built yet are skipped by `install`.
BINARIES := keelson-runtime keelson-shim keelson-agent keelson-server

RUN_DIR := /run/keelson
LOG_DIR := /var/log/keelson
RUNTIME_PID := $(RUN_DIR)/keelson-runtime.pid
RUNTIME_SOCKET := $(RUN_DIR)/cri.sock
RUNTIME_LOG := $(LOG_DIR)/keelson-runtime.log
SERVER_PID := $(RUN_DIR)/keelson-server.pid
SERVER_LOG := $(LOG_DIR)/keelson-server.log
SERVER_DATA := /var/lib/keelson/server
SERVER_LISTEN := 127.0.0.1:6443
# Default pod network, written by `make up` only when /etc/cni/net.d has no config.
CNI_CONF_DIR := /etc/cni/net.d
CNI_CONF := $(CNI_CONF_DIR)/10-keelson.conflist
POD_CIDR := 10.88.0.0/16

# What building and running a node needs from the distribution (tests need more: see .ci/run).
NODE_PACKAGES := protobuf-compiler libseccomp-dev pkg-config gcc libc6-dev containernetworking-plugins iproute2 iptables

.PHONY: all build release test bench install up down deps

all: build

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --workspace --bins --release

test:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	@# cargo's last line is often an empty doc-test run: end with the totals of every test binary.
	@mkdir -p target; status=0; \
	$(CARGO) test --workspace 2>&1 | tee target/test-output.log || status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6; i += $$8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' target/test-output.log; \
	exit $$status

bench: release
	@command -v skopeo >/dev/null || { \
		echo "installing skopeo"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends skopeo </dev/null; }
	KEELSON_BIN_DIR=$(RELEASE_DIR) $(RELEASE_DIR)/keelson-bench
	KEELSON_BIN_DIR=$(RELEASE_DIR) $(RELEASE_DIR)/keelson-server-bench
	KEELSON_BIN_DIR=$(RELEASE_DIR) $(RELEASE_DIR)/keelson-server-bench --store=etcd

install: release
	@for b in $(BINARIES); do \
		if [ -x "$(RELEASE_DIR)/$$b" ]; then \
			install -D -m 0755 "$(RELEASE_DIR)/$$b" "$(DESTDIR)$(PREFIX)/bin/$$b"; \
			echo "installed $(DESTDIR)$(PREFIX)/bin/$$b"; \
		else \
			echo "$$b is not built yet: skipped"; \
		fi; \
	done
	@for u in dist/systemd/*.service; do \
		[ -e "$$u" ] || continue; \
		install -D -m 0644 "$$u" "$(DESTDIR)/etc/systemd/system/$$(basename "$$u")"; \
		echo "installed $(DESTDIR)/etc/systemd/system/$$(basename "$$u")"; \
	done
	@install -d -m 0755 "$(DESTDIR)/etc/keelson"

# Installs the node's system packages that are missing (Debian/Ubuntu, as root).
deps:
	@missing=(); \
	for p in $(NODE_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$$p"); \
	done; \
	if [ $${#missing[@]} -gt 0 ]; then \
		echo "installing: $${missing[*]}"; \
		apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$${missing[@]}" </dev/null; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# A running runtime is recognised by its pid file AND /proc/PID/exe (a reused pid is not ours).
define runtime_pid
pid=""; \
if [ -f $(RUNTIME_PID) ]; then \
	p=$$(cat $(RUNTIME_PID)); \
	case "$$(readlink /proc/$$p/exe 2>/dev/null)" in */keelson-runtime|*/keelson-runtime" (deleted)") pid=$$p ;; esac; \
fi
endef

define server_pid
pid=""; \
if [ -f $(SERVER_PID) ]; then \
	p=$$(cat $(SERVER_PID)); \
	case "$$(readlink /proc/$$p/exe 2>/dev/null)" in */keelson-server|*/keelson-server" (deleted)") pid=$$p ;; esac; \
fi
endef

up: deps release
	@[ "$$(id -u)" = 0 ] || { echo "make up needs root" >&2; exit 1; }
	@mkdir -p $(RUN_DIR) $(LOG_DIR) $(CNI_CONF_DIR)
	@if ! ls $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.conf >/dev/null 2>&1; then \
		printf '%s\n' '{"cniVersion":"1.0.0","name":"keelson","plugins":[' \
		  '{"type":"bridge","bridge":"keelson0","isGateway":true,"ipMasq":false,"hairpinMode":true,' \
		  '"ipam":{"type":"host-local","ranges":[[{"subnet":"$(POD_CIDR)"}]],"routes":[{"dst":"0.0.0.0/0"}]}},' \
		  '{"type":"portmap","capabilities":{"portMappings":true}}]}' > $(CNI_CONF); \
		echo "wrote default pod network $(CNI_CONF) ($(POD_CIDR))"; \
	fi
	@# Packets to pod addresses that no pod has die here instead of following the default route.
	@ip route show table main | grep -q "^unreachable $(POD_CIDR)" || ip route add unreachable $(POD_CIDR) metric 4000
	@$(runtime_pid); \
	if [ -n "$$pid" ]; then \
		echo "keelson-runtime already running (pid $$pid)"; \
	else \
		stamp=$(RUN_DIR)/.keelson-runtime.starting; touch $$stamp; \
		setsid $(RELEASE_DIR)/keelson-runtime --socket $(RUNTIME_SOCKET) >>$(RUNTIME_LOG) 2>&1 </dev/null & \
		pid=$$!; echo $$pid > $(RUNTIME_PID); \
		ready=0; \
		for i in $$(seq 100); do \
			if ! kill -0 $$pid 2>/dev/null; then \
				echo "keelson-runtime exited during start-up; last log lines:" >&2; tail -n 20 $(RUNTIME_LOG) >&2; \
				rm -f $(RUNTIME_PID) $$stamp; exit 1; \
			fi; \
			if [ -S $(RUNTIME_SOCKET) ] && [ $(RUNTIME_SOCKET) -nt $$stamp ]; then ready=1; break; fi; \
			sleep 0.1; \
		done; \
		rm -f $$stamp; \
		if [ $$ready = 0 ]; then \
			echo "keelson-runtime (pid $$pid) did not create $(RUNTIME_SOCKET) within 10 s; last log lines:" >&2; \
			tail -n 20 $(RUNTIME_LOG) >&2; exit 1; \
		fi; \
		echo "keelson-runtime running (pid $$pid), socket $(RUNTIME_SOCKET), log $(RUNTIME_LOG)"; \
	fi
	@$(server_pid); \
	if [ -n "$$pid" ]; then \
		echo "keelson-server already running (pid $$pid)"; \
	else \
		setsid $(RELEASE_DIR)/keelson-server --listen $(SERVER_LISTEN) --data-dir $(SERVER_DATA) >>$(SERVER_LOG) 2>&1 </dev/null & \
		pid=$$!; echo $$pid > $(SERVER_PID); \
		ready=0; \
		for i in $$(seq 100); do \
			if ! kill -0 $$pid 2>/dev/null; then \
				echo "keelson-server exited during start-up; last log lines:" >&2; tail -n 20 $(SERVER_LOG) >&2; \
				rm -f $(SERVER_PID); exit 1; \
			fi; \
			if [ -s $(SERVER_DATA)/admin.kubeconfig ] && (exec 3<>/dev/tcp/$(subst :,/,$(SERVER_LISTEN))) 2>/dev/null; then ready=1; break; fi; \
			sleep 0.1; \
		done; \
		if [ $$ready = 0 ]; then \
			echo "keelson-server (pid $$pid) did not listen on $(SERVER_LISTEN) within 10 s; last log lines:" >&2; \
			tail -n 20 $(SERVER_LOG) >&2; exit 1; \
		fi; \
		echo "keelson-server running (pid $$pid), https://$(SERVER_LISTEN), data $(SERVER_DATA), log $(SERVER_LOG)"; \
	fi
	@echo "keelson-agent is not built yet: the node does not register, so pods stay Pending."
	@echo "export KUBECONFIG=$(SERVER_DATA)/admin.kubeconfig"
	@echo "the CRI socket works with crictl: export CONTAINER_RUNTIME_ENDPOINT=unix://$(RUNTIME_SOCKET) IMAGE_SERVICE_ENDPOINT=unix://$(RUNTIME_SOCKET)"

down:
	@$(runtime_pid); \
	if [ -z "$$pid" ]; then \
		echo "keelson-runtime is not running"; \
	else \
		$(RELEASE_DIR)/keelson-runtime --socket $(RUNTIME_SOCKET) pods stop-all || echo "could not stop pods" >&2; \
		kill -TERM $$pid; \
		for i in $$(seq 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
		if kill -0 $$pid 2>/dev/null; then \
			echo "keelson-runtime (pid $$pid) ignored SIGTERM for 10 s: sending SIGKILL"; kill -KILL $$pid; \
		fi; \
		echo "keelson-runtime stopped (pid $$pid)"; \
	fi; \
	rm -f $(RUNTIME_PID)
	@$(server_pid); \
	if [ -z "$$pid" ]; then \
		echo "keelson-server is not running"; \
	else \
		kill -TERM $$pid; \
		for i in $$(seq 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
		if kill -0 $$pid 2>/dev/null; then kill -KILL $$pid; fi; \
		echo "keelson-server stopped (pid $$pid; data in $(SERVER_DATA) stays)"; \
	fi; \
	rm -f $(SERVER_PID)
	@ip route del unreachable $(POD_CIDR) metric 4000 2>/dev/null || true
