#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each
# (default 10: the CI smoke run; give it 600 or more by hand). Installs
# cargo-fuzz from crates.io when it is missing. Needs the nightly toolchain
# (libFuzzer's instrumentation); a missing one fails the run loudly.
# New inputs go to target/fuzz-corpus, never into the committed seeds;
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"

rustup run nightly rustc --version >/dev/null 2>&1 \
    || { echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
    mkdir -p "target/fuzz-corpus/$target"
    echo "fuzz.sh: $target for ${seconds}s" >&2
    log="target/fuzz-$target.log"
    if ! cargo +nightly fuzz run -O "$target" "target/fuzz-corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $target failed; its input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
    grep -E '^Done' "$log" >&2
done
echo "fuzz.sh: no input panicked" >&2
