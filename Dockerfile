# syntax=docker/dockerfile:1
# credsync image: built with cargo, run on distroless as a non-root user.
#   docker build -t REGISTRY/credsync:0.1.0 .
# The image runs with a read-only root filesystem: credsync writes only its
# snapshot repository (the Helm chart mounts an emptyDir at /var/lib/credsync).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Link zlib (used by libgit2) statically, so the runtime needs nothing beyond
# glibc and libgcc, which distroless/cc has.
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin credsync \
 && install -D -m 0755 target/release/credsync /out/credsync \
 && mkdir -p /out/share/bash-completion/completions /out/share/zsh/vendor-completions \
             /out/share/fish/vendor_completions.d /out/share/man/man1 \
 && /out/credsync completions bash > /out/share/bash-completion/completions/credsync \
 && /out/credsync completions zsh > /out/share/zsh/vendor-completions/_credsync \
 && /out/credsync completions fish > /out/share/fish/vendor_completions.d/credsync.fish \
 && /out/credsync man > /out/share/man/man1/credsync.1

# Debian 12 like the builder, so glibc matches; :nonroot runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/credsync /usr/local/bin/credsync
# Shell completions and the man page, for copying out of the image
# (`docker cp`), as the README's "Shell completions and man page" says.
COPY --from=build /out/share /usr/local/share
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/credsync"]
CMD ["run"]
