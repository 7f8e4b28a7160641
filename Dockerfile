# syntax=docker/dockerfile:1
#
# ampproxy's container image: a static binary on distroless, run as an
# unprivileged user. It writes nothing outside the volumes the deployment
# mounts (the bbolt file, the ext_proc socket), so the root filesystem can
# be read-only. k8s/README.md shows how to deploy it.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t ampproxy .

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, in their own layer: it is rebuilt only when go.mod or
# go.sum change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# Static (no cgo, so no libc needed at run time), without local paths or
# debug symbols, with the version `ampproxy version` prints.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ampproxy ./cmd/ampproxy

# No shell, no package manager: only CA certificates, tzdata and the
# nonroot user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ampproxy /ampproxy
USER 65532:65532
# The admin listener (admin API, /healthz, /readyz, /metrics) of the
# shipped configs; ext_proc is a unix socket beside Envoy, or port 50051
# when a gateway calls ampproxy over the network.
EXPOSE 8081
ENTRYPOINT ["/ampproxy"]
CMD ["serve", "--config", "/etc/ampproxy/ampproxy.yaml"]
