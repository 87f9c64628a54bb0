#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test target against real services
# (a private dockerd, a registry with basic auth, moto for ECR and SSM), all on loopback.
#
#   scripts/test.sh                     everything
#   scripts/test.sh NAME [-- ARGS...]   extra arguments go to each `cargo test`
#
# The unit tests run once; the end-to-end tests run once per engine, each against services of its own.
#
# Environment:
#   ECR_BUILD_ENGINES="20.10 28 28-containerd"  the Docker engines the end-to-end tests run against
#                            (default all three; 28-containerd is Docker 28 with the containerd image store)
#   ECR_BUILD_SKIP_LINT=1    skip cargo fmt --check and cargo clippy
#   ECR_BUILD_KEEP_STATE=1   keep the services' state dir and logs after the run
#   plus the knobs described at the top of scripts/services.sh
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/services.sh
source scripts/services.sh

phase() { printf '==> %s\n' "$*" >&2; }

require_cargo() {
    if ! command -v cargo >/dev/null; then
        cat >&2 <<'EOF'
error: cargo is not installed. Install the Rust toolchain with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    . "$HOME/.cargo/env"
EOF
        exit 127
    fi
    local component
    for component in fmt clippy; do
        if ! cargo "$component" --version >/dev/null 2>&1; then
            echo "error: cargo $component is missing; run: rustup component add ${component/fmt/rustfmt}" >&2
            exit 127
        fi
    done
}

# Print the services' recent warnings and errors, so that a CI failure caused by a service can be
# diagnosed after the state dir is gone. Info lines and successful requests are left out.
show_service_logs() {
    local state_dir=$1 log lines
    for log in "$state_dir"/dockerd.log "$state_dir"/registry.log "$state_dir"/moto.log; do
        [[ -s $log ]] || continue
        lines=$(grep -vE 'level=(debug|info)|" [23][0-9][0-9] ' "$log" | tail -n 15) || true
        [[ -n $lines ]] || continue
        printf -- '--- %s (warnings, errors, failed requests) ---\n%s\n' "${log##*/}" "$lines" >&2
    done
}

state_dir=
cleanup() {
    local status=$?
    # Run once, whatever ended the script.
    trap - EXIT INT TERM
    if [[ -n $state_dir ]]; then
        if ((status != 0)); then
            show_service_logs "$state_dir"
        fi
        phase "stopping services"
        if [[ ${ECR_BUILD_KEEP_STATE:-0} == 1 ]]; then
            ecr_build_stop_services "$state_dir" --keep || true
        else
            ecr_build_stop_services "$state_dir" || true
        fi
    fi
    exit "$status"
}

main() {
    require_cargo

    local -a engines
    read -r -a engines <<<"${ECR_BUILD_ENGINES:-20.10 28 28-containerd}"
    export ECR_BUILD_ENGINES="${engines[*]}"

    phase "checking dependencies (Debian packages, moto venv, engines ${engines[*]})"
    # shellcheck disable=SC2119 # no arguments: install everything, moto included
    ecr_build_install

    # Lints need no services: fail fast before starting any.
    if [[ ${ECR_BUILD_SKIP_LINT:-0} != 1 ]]; then
        phase "cargo fmt --check"
        cargo fmt --check
        phase "cargo clippy --all-targets -- -D warnings"
        cargo clippy --all-targets -- -D warnings
    fi

    phase "cargo test --lib --bins${*:+ $*} (unit tests)"
    cargo test --lib --bins "$@"

    trap cleanup EXIT
    # A signal must still run the EXIT trap, so that no daemon outlives the run.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local engine
    for engine in "${engines[@]}"; do
        # Short path under /tmp: the docker socket path must fit in 107 bytes.
        state_dir=$(mktemp -d /tmp/ecrb.XXXXXX)
        phase "starting services with Docker $engine in $state_dir"
        ECR_BUILD_ENGINE=$engine ecr_build_start_services "$state_dir"
        (
            # shellcheck source=/dev/null
            source "$state_dir/env"
            phase "cargo test --test e2e${*:+ $*} (Docker $engine)"
            cargo test --test e2e "$@"
        )
        phase "stopping the services of Docker $engine"
        ecr_build_stop_services "$state_dir"
        state_dir=
    done
}

main "$@"
