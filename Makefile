# ampproxy — one target per job. `make demo` and `make test` are the two the
# README promises work on a fresh machine with only Go installed.

GO       ?= go
BIN      := bin/ampproxy
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
PKGS     := ./...

.PHONY: build test lint run bench demo fuzz generate clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ampproxy

# -race needs cgo; the race detector is what the concurrency tests are for.
# go test hides a passing package's output, so the note on the real-Envoy
# half of the end-to-end suite is printed here.
test:
	@command -v envoy >/dev/null 2>&1 || echo "note: no envoy on PATH: the end-to-end suite runs against envoy/envoytest only"
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m $(PKGS)

lint:
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

run: build
	./$(BIN) serve --config examples/ampproxy.yaml

# The Go micro-benchmarks, then ampproxy against a no-op ext_proc server
# under load (throughput, latency, allocations), then 100,000 installations;
# writes BENCHMARKS.md. About 4 minutes on 2 cores; shorter with e.g.
# BENCHFLAGS='--round 2s --rounds 3 --scale 20000'.
BENCHFLAGS ?=
bench:
	$(GO) run ./cmd/ampbench suite --go '$(GO)' --out BENCHMARKS.md $(BENCHFLAGS)

# The README's first command: ampproxy, envoytest and a sample TLS provider,
# connections made through the CLI, real calls printed like curl -v.
demo: build
	$(GO) run ./examples/demo -ampproxy $(BIN)

# Each fuzz target in turn (go test fuzzes one target per run); FUZZTIME
# each. make test replays their corpora in testdata/fuzz as plain tests.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzResolve$$' -fuzztime $(FUZZTIME) ./catalog/
	$(GO) test -run '^$$' -fuzz '^FuzzResolveEmbedded$$' -fuzztime $(FUZZTIME) ./catalog/
	$(GO) test -run '^$$' -fuzz '^FuzzParseHeaders$$' -fuzztime $(FUZZTIME) ./extproc/
	$(GO) test -run '^$$' -fuzz '^FuzzWindowEnd$$' -fuzztime $(FUZZTIME) ./throttle/

# Refreshes generated files, such as k8s/sidecar/envoy.yaml from
# envoy/envoy.yaml; `go test ./k8s/` fails while they are stale.
generate:
	$(GO) generate $(PKGS)

clean:
	rm -rf bin
