# syntax=docker/dockerfile:1
# ecl-gate: the gate and the reference demo tool in one slim, non-root image.
#
#   docker build -t ecl-gate:local .
#   docker run --rm -p 8000:8000 -v "$PWD/profiles:/srv/ecl-gate/profiles:ro" ecl-gate:local
#
# Mount your profiles at /srv/ecl-gate/profiles, your config at /etc/ecl-gate/ecl-gate.toml and
# keep /var/lib/ecl-gate/audit on a volume: the audit log is the evidence.

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
# The git revision reported as `runtime.build` (the build context has no .git).
ARG GATE_BUILD_REVISION=local
ENV GATE_BUILD_REVISION=${GATE_BUILD_REVISION}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ecl-gate --example demo_tool \
 && mkdir -p /out \
 && cp target/release/ecl-gate target/release/examples/demo_tool /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system trust store for https:// upstreams (`tls.public_roots`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ecl \
 && useradd --system --uid 10001 --gid ecl --home-dir /srv/ecl-gate --shell /usr/sbin/nologin ecl \
 && mkdir -p /etc/ecl-gate /srv/ecl-gate/profiles /var/lib/ecl-gate/audit /run/keys \
 && chown -R ecl:ecl /var/lib/ecl-gate /run/keys
COPY --from=build /out/ecl-gate /out/demo_tool /usr/local/bin/
COPY config/ecl-gate.toml /etc/ecl-gate/ecl-gate.toml
COPY profiles /srv/ecl-gate/profiles

ENV ECL_CONFIG=/etc/ecl-gate/ecl-gate.toml \
    ECL_LISTEN=0.0.0.0:8000 \
    ECL_ADMIN_LISTEN=0.0.0.0:9000 \
    ECL_PROFILES_ROOT=/srv/ecl-gate/profiles \
    ECL_AUDIT__PATH=/var/lib/ecl-gate/audit/ecl-audit-{hostname}.log \
    ECL_LOG__FORMAT=json

WORKDIR /srv/ecl-gate
VOLUME ["/var/lib/ecl-gate/audit"]
USER 10001:10001
EXPOSE 8000 9000
# Readiness from the admin listener: the execution listener serves, profiles are readable and
# the audit log takes writes. The binary probes itself, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/ecl-gate", "probe", "--timeout", "2s", "http://127.0.0.1:9000/readyz"]
ENTRYPOINT ["/usr/local/bin/ecl-gate"]
CMD ["serve"]
