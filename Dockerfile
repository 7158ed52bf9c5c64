# prenv's container image: one static (musl) binary on distroless/static, run as an unprivileged user.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/acme/prenv:dev .
#
# The build stages run on the build machine's own platform ($BUILDPLATFORM) and cross-compile with
# cargo-zigbuild (zig is the C compiler for libgit2, libssh2, OpenSSL, zlib and aws-lc), so an arm64 image needs no
# emulation; the runtime stage only copies files in. .github/workflows/release.yml builds the
# release binaries with the same command and the same tool versions.
#
# Bases are pinned by exact version and by digest (a tag says what an image is, the digest which one);
# moving a base is a reviewed commit, never a silent re-tag.
#
# Runtime contract: ENTRYPOINT is prenv, so a Pod passes only `args:` (CMD prints the help); the user is 65532:65532
# (distroless's nonroot, the one prenv init's serve and watch Deployments run as); the root filesystem can be read-only: prenv writes
# only its git cache and default data directory, both under /tmp, so mount an emptyDir (Kubernetes) or
# a tmpfs (`docker run --read-only --tmpfs /tmp`) there. `prenv watch` writes nothing at all.

# zig and cargo-zigbuild come as binary wheels from PyPI: no compiler download inside the build.
FROM --platform=$BUILDPLATFORM python:3.13.9-slim-bookworm@sha256:b685a4fa58bb19d1814d78a1ec0f0208f351452724f78b20212c984d6e124a34 AS zig
ARG ZIGLANG_VERSION=0.15.2
ARG CARGO_ZIGBUILD_VERSION=0.24.1
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore --target /opt/zig \
      "ziglang==${ZIGLANG_VERSION}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}"

FROM --platform=$BUILDPLATFORM rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
# cargo-zigbuild takes zig from CARGO_ZIGBUILD_ZIG_PATH, so the Python that installed it is not needed.
COPY --from=zig /opt/zig /opt/zig
ENV PATH=/opt/zig/bin:$PATH \
    CARGO_ZIGBUILD_ZIG_PATH=/opt/zig/ziglang/zig \
    CARGO_TERM_COLOR=never
# git2's HTTPS and SSH transports link a vendored OpenSSL (Cargo.toml), which openssl-src builds with
# perl (its Configure loads IPC::Cmd, in Debian's perl, not the image's perl-base) and make, neither in
# the slim image. Not pinned to exact versions: Debian keeps only a suite's newest build of a package,
# so such a pin breaks the build at the next security update; the base digest fixes the suite.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends perl make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# TARGETARCH is the image's platform (amd64 or arm64), set by buildx; the Rust target follows from it.
# The registry and target caches are BuildKit cache mounts, kept between builds but not in any layer,
# so the binary is copied out of target/ inside the same step.
ARG TARGETARCH
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=prenv-target-${TARGETARCH},sharing=locked \
    case "${TARGETARCH}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "prenv images are built for linux/amd64 and linux/arm64, not ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "${target}" \
    && cargo zigbuild --release --locked --target "${target}" \
    && install -D -m 0755 "target/${target}/release/prenv" /out/prenv \
    && if [ "${TARGETARCH}" = "$(dpkg --print-architecture)" ]; then /out/prenv --version; fi

# distroless/static: CA certificates (prenv's TLS uses the system roots), /etc/passwd with nonroot,
# tzdata; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639
LABEL org.opencontainers.image.title="prenv" \
      org.opencontainers.image.description="One preview environment per GitHub pull request, the GitOps way"
COPY --from=build /out/prenv /usr/local/bin/prenv
ENV XDG_CACHE_HOME=/tmp/cache \
    XDG_DATA_HOME=/tmp/data
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/prenv"]
CMD ["--help"]
