#!/usr/bin/env bash
# The main job, end to end, on this machine: build the example app's images with ecr-build in
# dry-run mode (nothing is pushed, no AWS account is needed) and show the deploy artifacts.
#
#   scripts/demo.sh [--release] [--keep] [--config FILE]
#
#   --config   another ecr-build.toml (default examples/app/ecr-build.toml)
#   --release  build ecr-build with the release profile (slower to compile; the default dev
#              profile shares its build with scripts/test.sh)
#   --keep     leave the private dockerd running (if one had to be started) and print how to use it
#
# Uses the Docker daemon at $DOCKER_HOST (or /var/run/docker.sock) when it answers; otherwise
# starts a private one under /tmp, stopped at exit.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/services.sh
source scripts/services.sh

config=examples/app/ecr-build.toml
out_dir=$repo_root/target/demo

phase() { printf '==> %s\n' "$*" >&2; }

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

# True if a Docker daemon answers at $DOCKER_HOST, or at the default socket when it is unset.
docker_answers() {
    local host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    case $host in
    unix://*)
        [[ -S ${host#unix://} ]] &&
            [[ $(curl -s --noproxy '*' -m 3 --unix-socket "${host#unix://}" http://localhost/_ping 2>/dev/null) == OK ]]
        ;;
    tcp://* | http://*)
        local addr=${host#*://}
        [[ $(curl -s --noproxy '*' -m 3 "http://$addr/_ping" 2>/dev/null) == OK ]]
        ;;
    *)
        # ssh:// and the like: let the docker client decide.
        ecr_build_docker version >/dev/null 2>&1
        ;;
    esac
}

state_dir=
keep=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $state_dir ]]; then
        if ((keep)); then
            cat >&2 <<EOF
==> dockerd keeps running on $DOCKER_HOST
    export DOCKER_HOST=$DOCKER_HOST
    stop it with: scripts/services.sh stop $state_dir
EOF
        else
            ecr_build_stop_services "$state_dir" || true
        fi
    fi
    exit "$status"
}

show_artifacts() {
    local dir=$1 file
    phase "artifacts in $dir"
    local found=0
    for file in "$dir"/*; do
        [[ -f $file ]] || continue
        found=1
        printf -- '--- %s\n' "${file#"$repo_root"/}"
        cat "$file"
        # The artifact files need not end with a newline.
        [[ -z $(tail -c1 "$file") ]] || echo
    done
    if ((!found)); then
        echo "(no artifact was written)" >&2
    fi
}

main() {
    local -a profile=()
    while (($#)); do
        case $1 in
        --release) profile=(--release) ;;
        --keep) keep=1 ;;
        --config)
            (($# >= 2)) || usage
            config=$2
            shift
            ;;
        -h | --help) usage 0 ;;
        *)
            echo "unknown argument: $1" >&2
            usage
            ;;
        esac
        shift
    done

    if [[ ! -f $config ]]; then
        echo "error: $config does not exist in this checkout" >&2
        exit 2
    fi
    if ! command -v cargo >/dev/null; then
        echo "error: cargo is not installed; see https://rustup.rs (then: . \"\$HOME/.cargo/env\")" >&2
        exit 127
    fi

    phase "checking dependencies (Debian packages)"
    ecr_build_install --without-moto

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if docker_answers; then
        phase "using the Docker daemon at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
    else
        phase "no Docker daemon answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}; starting a private one"
        state_dir=$(mktemp -d /tmp/ecrb.XXXXXX)
        ecr_build_start_dockerd "$state_dir"
        export DOCKER_HOST=unix://$state_dir/docker.sock
    fi
    ecr_build_base_image "$ECR_BUILD_BASE_IMAGE_NAME"

    # A dry run talks to no AWS service; this also keeps any credential lookup off the
    # instance metadata address.
    export AWS_EC2_METADATA_DISABLED=true

    # Start from an empty folder, so that what is shown below is this run's output.
    rm -rf "$out_dir"
    mkdir -p "$out_dir"
    local -a cmd=(cargo run "${profile[@]}" --bin ecr-build -- build --dry-run --config "$config" --output-dir "$out_dir")
    phase "${cmd[*]}"
    "${cmd[@]}"

    show_artifacts "$out_dir"
}

main "$@"
