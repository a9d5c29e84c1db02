# Kiln's image: the kiln binary, sccache, and the farm's dependency set prebuilt for
# the fixed build root, on a Rust toolchain (workers run cargo).
#
# No container engine runs on Kiln's development machines, so CI cannot build this
# file: it is kept deliberately plain. Build with `docker build -t kiln .`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kiln \
 && cargo install --locked sccache --version 0.19.0

FROM rust:1.95-slim-bookworm
# bubblewrap: every build runs in its sandbox.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --create-home kiln \
 && mkdir -p /var/lib/kiln /opt/kiln \
 && chown -R kiln:kiln /var/lib/kiln /opt/kiln /usr/local/cargo
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
COPY --from=build /usr/local/cargo/bin/sccache /usr/local/bin/sccache
USER 10001
# The dependency set, built once into the cache that every member copies from
# (KILN_DEPSET_CACHE in the chart), and its crates fetched so builds run offline.
RUN kiln prepare --build-root /var/lib/kiln/build --depset-cache /opt/kiln/depset-cache --profile release \
 && rm -rf /var/lib/kiln/build
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["server"]
