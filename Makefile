# chio-agent build, test and generate targets. Every target that needs a tool
# installs it first (Debian packages, as root), so the README's two commands
# work on a fresh machine.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/chio-agent
FUZZTIME ?= 60s
SHELL    := /bin/bash

.PHONY: all build demo test test-go bench-smoke fuzz fuzz-smoke lint generate check-generate deps deps-bpf deps-test clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/chio-agent

# The README's first command: the redirect demo on local servers.
demo: deps build
	$(BIN) demo

# The README's second command: everything CI runs.
test: deps-test lint check-generate test-go bench-smoke fuzz-smoke

# go test's own output; under CI=true a skipped test fails the run, because
# CI runs as root and every privileged test must run there. -parallel 4: up
# to four t.Parallel() tests of a package at once (the default is the 2
# cores), since the agent's end-to-end tests mostly wait, not compute
# (docs/development.md says which tests may be parallel).
test-go:
	@mkdir -p .tmp
	set -o pipefail; $(GO) test -race -count=1 -v -parallel 4 -timeout 30m ./... 2>&1 | tee .tmp/test.log
	@if [ "$$CI" = "true" ] && grep -q -- '--- SKIP' .tmp/test.log; then \
		echo "CI=true: these tests skipped, and CI must run them all:"; grep -- '--- SKIP' .tmp/test.log; exit 1; fi

# Every benchmark once, so none of them rots.
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

fuzz-smoke:
	scripts/fuzz 20000x

fuzz:
	scripts/fuzz $(FUZZTIME)

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

generate: deps-bpf
	$(GO) generate ./bpf/

# Regenerate and fail when the committed bindings and objects are stale.
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "bpf/: generated files differ from the committed ones; run make generate and commit"; exit 1; }

deps: 
	@scripts/deps runtime

deps-bpf:
	@scripts/deps bpf

deps-test:
	@scripts/deps test

clean:
	rm -rf bin .tmp
