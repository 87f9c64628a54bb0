#!/usr/bin/env bash
# Benchmark: ecr-build against the shell of today's buildspecs (scripts/bench/buildspec.sh: aws CLI v1 from
# PyPI + Debian's docker CLI + printf) and against `docker buildx bake --push` (scripts/bench/bake.sh:
# Debian sid's docker-buildx plugin, fetched with Docker 28, on the same engine through its docker
# driver), on the same Docker engine, registry and moto. Run by hand; not part of CI.
#
#   scripts/bench.sh [--rounds N] [--quick] [--bin PATH] [--no-drop-caches] [--keep] [--platforms-only]
#                    [--engine 20.10|28|28-containerd] [--cache-only]
#
#   --rounds N         rounds per scenario (default 5); each round runs both tools
#   --quick            2 rounds, a smaller large context (10,000 files, 60 MB) and a 256 MB hashing
#                      context
#   --bin PATH         time this ecr-build binary instead of building target/release/ecr-build
#                      (e.g. to compare two commits on the same fixtures)
#   --no-drop-caches   do not drop the page cache for the cold hashing measurement
#   --keep             keep the services' state dir and the fixtures (their paths are printed)
#   --platforms-only   only the multi-platform measurement (below)
#   --cache-only       only the fresh-host cache measurement (below), on 28-containerd unless
#                      --engine names another
#   --engine V         the engine (and its docker CLI) to measure on: 20.10 (Debian 12's, the default)
#                      or 28 (Docker 28.5, as CodeBuild's current images ship it)
#
# Prints a table (median seconds per tool, ecr-build/shell ratio, the target; scripts/bench/report.py
# computes them) and writes it as
# Markdown to target/bench/results.md; raw times go to target/bench/times.tsv and every run's
# output to target/bench/logs/. Needs root (dockerd), like scripts/test.sh. On 2 cores a full run
# takes ~5 minutes and --quick ~2.5, plus the release build (~11 minutes from nothing). Run it on an
# otherwise idle machine: it prints how busy the CPUs were before and after, and warns if they were.
#
# Scenarios, each timed for the three tools, which take turns within a round (and which one goes
# first rotates between rounds), so that drift on the machine hits them alike:
#   1. first build       a new commit, new repositories, and an engine with no build cache and no
#                        image but the base (docker builder prune -af; docker rmi), for each tool
#   2. re-run            the same commit and content again, right after that tool's first build
#   3. one changed       a new commit in which one of the three images' sources changed
#   4. large context     two images whose contexts have >= 30,000 files and >= 200 MB (big) and a
#                        quarter of that (big2), most of it a .dockerignored node_modules: a first
#                        build (clean engine, new repositories), a re-run, and a new commit in which
#                        one sent source file of big changed
#   5. monorepo          20 services under one shared context (`context = "."`, each Dockerfile in
#                        services/NAME/ copying its own folder; 940 sent files, 4,000 ignored): a
#                        first build, a re-run, and a new commit in which one service's file changed
# The app (scripts/bench/fixtures.py) has three images, web, api and worker, each FROM the local busybox
# base with network none: a slow "dependencies" RUN (seconds of busybox sha256sum), then COPY src and
# a short "compile" RUN. Scenario 3 edits api/src/main.sh, so only api's last steps must run again.
# Each run is checked (imagedefinitions.json, and every manifest in the registry), and ecr-build's
# per-image verdicts (pushed, reused, ...) are recorded next to its times.
# The tools use the same dockerd, so they would share BuildKit's cache (it is engine-wide): that
# is why the engine is reset before each tool's first builds, and why a tool's re-run and
# one-changed runs follow its own first build directly. Each tool pushes to repositories of its
# own, so none sees another's tags or blobs in the registry.
# Multi-platform (ecr-build alone: the shell has no equivalent): one image for linux/amd64 and
# linux/arm64 (its RUN step under QEMU for arm64), built in one run; and fanned out over two more
# engines, one platform each at the same time (`--platform`), followed by the final run on the
# main engine, which finds both parts and only puts the index and writes the artifacts. Each round
# uses new repositories and new content, so every platform is built.
# Fresh-host cache (--cache-only; needs the containerd image store, so 28-containerd by default):
# one image from a multi-stage Dockerfile whose dependency stage (not in the final image) takes
# seconds; built once, then the engine is reset as on a new CodeBuild host and one source file
# changes. Timed for ecr-build (its registry cache, `buildcache`), `docker buildx bake --push` with
# the same registry cache (cache-to/cache-from type=registry, mode=max, image-manifest) and
# ecr-build --cache inline. Targets: <= 0.90 x bake with a registry cache, <= 0.25 x inline.
# With it, who should push (ecr-build's choice): an image of one new 64 MB layer built and pushed by
# `docker buildx build` either with --load and then `docker push` (the engine pushes, as ecr-build
# does) or with --output type=image,push=true (BuildKit pushes), on the engine under test.
# Then `ecr-build plan` over a context of ~1 GB of sent data gives the context hashing throughput
# (sent bytes / wall time; page cache dropped when permitted, and warm) and its peak RSS, and
# `ecr-build build --dry-run` of that context the peak RSS while it streams the tar to the engine.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/services.sh
source scripts/services.sh

# The aws CLI the shell pipeline uses: awscli v1 from PyPI, pinned, in a venv of its own (moto's
# venv pins its own botocore).
AWSCLI_VERSION=1.46.2
AWSCLI_VENV=${ECR_BUILD_AWSCLI_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ecr-build/awscli-venv}
# Debian's docker CLI (docker.io), as on CodeBuild's images; /usr/local/bin/docker may be another.
DOCKER_CLI=/usr/bin/docker
# bake's plugin: Debian sid's docker-buildx, fetched with Docker 28 by scripts/services.sh.
BUILDX=
TOOLS=(shell bake ecr-build)
APP_IMAGES=(web api worker)
LARGE_IMAGES=(big big2)
MONOREPO_SIZE=20
MONOREPO_IMAGES=()
# The image whose source changes in scenario 3.
CHANGED_IMAGE=api

rounds=5
quick=0
bin=
drop_caches=1
keep=0
# The large context of scenario 4 and the hashing context (MB of sent data).
large_files=32000
large_mb=220
hash_mb=1000

out_dir=$repo_root/target/bench
state_dir=
work=
registry=
times=
invocation=
load_at_start=
load_at_end=
# Filled in as the run goes: fixture summaries (JSON) and the hashing measurements.
large_summary=
hash_summary=
platforms_only=0
cache_only=0
hash_warm_mbs=
hash_cold_mbs=
plan_rss=
dry_rss=
dry_secs=
shell_login_secs=

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

parse_args() {
    invocation="scripts/bench.sh${*:+ $*}"
    local rounds_given=
    while (($#)); do
        case $1 in
        --rounds)
            if (($# < 2)) || [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
                usage
            fi
            rounds_given=$2
            shift
            ;;
        --quick) quick=1 ;;
        --bin)
            (($# >= 2)) || usage
            bin=$(realpath "$2")
            [[ -x $bin ]] || die "--bin $2 is not an executable"
            shift
            ;;
        --no-drop-caches) drop_caches=0 ;;
        --keep) keep=1 ;;
        --platforms-only) platforms_only=1 ;;
        --cache-only) cache_only=1 ;;
        --engine)
            (($# >= 2)) && [[ $2 == 20.10 || $2 == 28 || $2 == 28-containerd ]] || usage
            export ECR_BUILD_ENGINE=$2
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
    if ((cache_only)) && [[ -z ${ECR_BUILD_ENGINE:-} ]]; then
        export ECR_BUILD_ENGINE=28-containerd
    fi
    if ((quick)); then
        rounds=2
        large_files=10000
        large_mb=60
        hash_mb=256
    fi
    [[ -n $rounds_given ]] && rounds=$rounds_given
    return 0
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $state_dir ]]; then
        if ((keep)); then
            log "services keep running: source $state_dir/env; stop with scripts/services.sh stop $state_dir"
        else
            ecr_build_stop_services "$state_dir" || true
        fi
    fi
    if [[ -n $work ]]; then
        if ((keep)); then
            log "fixtures kept in $work"
        else
            rm -rf "$work"
        fi
    fi
    exit "$status"
}

# Everything the benchmark needs that may be missing: the test services' packages and moto,
# GNU time (for peak RSS), and the pinned aws CLI.
install_deps() {
    if [[ $(id -u) != 0 ]]; then
        die "run as root: the benchmark starts its own dockerd"
    fi
    command -v cargo >/dev/null || [[ -n $bin ]] ||
        die "cargo is not installed; see https://rustup.rs (then: . \"\$HOME/.cargo/env\")"
    # shellcheck disable=SC2119 # no arguments: moto is needed
    ecr_build_install
    if [[ ! -x /usr/bin/time ]] || ! ecr_build_pkg_installed time; then
        ecr_build_apt_install time
    fi
    [[ -x $DOCKER_CLI ]] || die "$DOCKER_CLI is missing (Debian's docker.io)"
    BUILDX=$(ecr_build_engine28_dir)/root/usr/libexec/docker/cli-plugins/docker-buildx
    [[ -x $BUILDX ]] || die "$BUILDX is missing (scripts/services.sh fetches it with Docker 28)"
    if ecr_build_engine_is_28; then
        DOCKER_CLI=$(ecr_build_engine_cli)
    fi
    local have
    have=$("$AWSCLI_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("awscli"))' 2>/dev/null) || have=
    if [[ $have != "$AWSCLI_VERSION" || ! -x $AWSCLI_VENV/bin/aws ]]; then
        log "installing awscli==$AWSCLI_VERSION into $AWSCLI_VENV"
        mkdir -p "$(dirname "$AWSCLI_VENV")"
        "$(ecr_build_python)" -m venv --clear "$AWSCLI_VENV"
        "$AWSCLI_VENV/bin/python" -m pip install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION"
    fi
}

build_binary() {
    if [[ -n $bin ]]; then
        log "using $bin"
        return
    fi
    log "cargo build --release --bin ecr-build"
    cargo build --release --bin ecr-build
    bin=$repo_root/target/release/ecr-build
}

start_services() {
    state_dir=$(mktemp -d /tmp/ecrb.XXXXXX)
    ecr_build_start_services "$state_dir"
    # shellcheck source=/dev/null
    source "$state_dir/env"
    registry=$ECR_BUILD_TEST_REGISTRY
}

docker_cli() { "$DOCKER_CLI" "$@"; }

new_sha() { od -An -N20 -tx1 /dev/urandom | tr -d ' \n'; }

# ECR CreateRepository on moto (JSON 1.1; moto checks no signature). Untimed set-up, so plain curl
# rather than a Python start per repository.
create_repositories() {
    local prefix=$1 name code
    shift
    for name in "$@"; do
        code=$(curl -s --noproxy '*' -o "$work/create-repo.out" -w '%{http_code}' -X POST "$AWS_ENDPOINT_URL" \
            -H 'X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.CreateRepository' \
            -H 'Content-Type: application/x-amz-json-1.1' \
            -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ecr/aws4_request, SignedHeaders=host, Signature=0' \
            -d "{\"repositoryName\":\"$prefix/$name\"}")
        [[ $code == 200 ]] || die "CreateRepository $prefix/$name: HTTP $code: $(cat "$work/create-repo.out")"
    done
}

# A "first build" engine: no build cache and no image but the base (which cannot be pulled again).
reset_engine() {
    local base id
    base=$(docker_cli image inspect -f '{{.Id}}' "$ECR_BUILD_BASE_IMAGE_NAME")
    while IFS= read -r id; do
        [[ -n $id && $id != "$base" ]] || continue
        docker_cli image rm -f "$id" >/dev/null 2>&1 || true
    done < <(docker_cli image ls -aq --no-trunc | sort -u)
    docker_cli builder prune -af >/dev/null
    sync
}

# ecr-build's config for an app dir whose images are the subdirectories named in "$@", or with
# LAYOUT=monorepo, the services under one shared context.
write_config() {
    local app=$1 prefix=$2 name
    shift 2
    {
        echo '# Written by scripts/bench.sh: one tag, as the shell pipeline pushes.'
        echo 'tags = ["{short_sha}"]'
        echo 'network = "none"'
        for name in "$@"; do
            if [[ ${LAYOUT:-} == monorepo ]]; then
                printf '\n[images.%s]\nrepository = "%s/%s"\ncontext = "."\ndockerfile = "services/%s/Dockerfile"\n' \
                    "$name" "$prefix" "$name" "$name"
            else
                printf '\n[images.%s]\nrepository = "%s/%s"\ncontext = "%s"\n' "$name" "$prefix" "$name" "$name"
            fi
        done
    } >"$app/ecr-build.toml"
}

# run_tool TOOL APP PREFIX SHA LOG IMAGE...: one build stage of TOOL in APP, pushing to PREFIX/IMAGE.
run_tool() {
    local tool=$1 app=$2 prefix=$3 sha=$4 logf=$5
    shift 5
    case $tool in
    shell | bake)
        local dc rc=0
        dc=$(mktemp -d "$work/docker-config.XXXXXX")
        mkdir -p "$dc/cli-plugins"
        ln -s "$BUILDX" "$dc/cli-plugins/docker-buildx"
        (
            cd "$app"
            export DOCKER_CONFIG=$dc DOCKER_BUILDKIT=1 CODEBUILD_RESOLVED_SOURCE_VERSION=$sha
            export REGISTRY=$registry REPO_PREFIX=$prefix IMAGES="$*" LAYOUT=${LAYOUT:-}
            export AWS=$AWSCLI_VENV/bin/aws DOCKER=$DOCKER_CLI
            if [[ $tool == shell ]]; then
                bash "$repo_root/scripts/bench/buildspec.sh"
            else
                bash "$repo_root/scripts/bench/bake.sh"
            fi
        ) >"$logf" 2>&1 || rc=$?
        rm -rf "$dc"
        return "$rc"
        ;;
    ecr-build)
        # stdout (the per-image summary) apart from the log lines on stderr.
        CODEBUILD_RESOLVED_SOURCE_VERSION=$sha "$bin" build --config "$app/ecr-build.toml" \
            --registry "$registry" --output-dir "$app" >"${logf%.log}.summary" 2>"$logf"
        ;;
    esac
}

# Checks what a run left behind: imagedefinitions.json names every image at the commit's tag, and the
# registry serves each manifest.
verify_run() {
    local tool=$1 app=$2 prefix=$3 sha=$4 logf=$5 name code
    shift 5
    local tag=${sha:0:7}
    local want=()
    for name in "$@"; do
        want+=("$name=$registry/$prefix/$name:$tag")
    done
    if ! "$(ecr_build_python)" - "$app/imagedefinitions.json" "${want[@]}" <<'EOF'; then
import json, sys
got = [f'{d["name"]}={d["imageUri"]}' for d in json.load(open(sys.argv[1]))]
if got != sys.argv[2:]:
    sys.exit(f"imagedefinitions.json: {got} != {sys.argv[2:]}")
EOF
        die "$tool wrote a wrong imagedefinitions.json (log: $logf)"
    fi
    for name in "$@"; do
        code=$(ecr_build_http_code -I -u "$ECR_BUILD_TEST_REGISTRY_USER:$ECR_BUILD_TEST_REGISTRY_PASSWORD" \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            -H 'Accept: application/vnd.oci.image.index.v1+json' \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "http://$registry/v2/$prefix/$name/manifests/$tag")
        [[ $code == 200 ]] || die "$tool: $registry/$prefix/$name:$tag is not in the registry (HTTP $code; log: $logf)"
    done
}

# What ecr-build said it did per image: the second word of each summary line on its stdout
# ("pushed", or whatever a newer binary says for an image it re-used), e.g. "pushed x3".
ecr_outcome() {
    awk 'NF >= 2 { print $2 }' "$1" | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }'
}

# timed SCENARIO TOOL ROUND APP PREFIX SHA IMAGE...: run, time, verify, record.
timed() {
    local scenario=$1 tool=$2 round=$3 app=$4 prefix=$5 sha=$6
    shift 6
    local logf=$out_dir/logs/r$round-$scenario-$tool.log
    rm -f "$app/imagedefinitions.json"
    local t0 t1 rc=0
    t0=$EPOCHREALTIME
    run_tool "$tool" "$app" "$prefix" "$sha" "$logf" "$@" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
        printf -- '--- last lines of %s ---\n' "$logf" >&2
        tail -n 30 "$logf" >&2
        die "$tool failed in scenario $scenario, round $round (exit $rc)"
    fi
    verify_run "$tool" "$app" "$prefix" "$sha" "$logf" "$@"
    local secs note=
    secs=$(seconds_between "$t0" "$t1")
    if [[ $tool == ecr-build ]]; then
        note=$(ecr_outcome "${logf%.log}.summary")
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$scenario" "$tool" "$round" "$secs" "$note" >>"$times"
    log "round $round  $(printf '%-14s %-9s %7.2f s' "$scenario" "$tool" "$secs")${note:+  ($note)}"
}

# One tool's share of a round: scenarios 1-3 on its own copy of the app, then scenario 4.
run_round_for() {
    local tool=$1 round=$2 sha1=$3 sha2=$4
    local prefix=bench-r$round-$tool
    local app=$work/r$round-$tool
    cp -a "$work/app-r$round" "$app"
    write_config "$app" "$prefix" "${APP_IMAGES[@]}"
    create_repositories "$prefix" "${APP_IMAGES[@]}" "${LARGE_IMAGES[@]}" "${MONOREPO_IMAGES[@]}"

    reset_engine
    timed first "$tool" "$round" "$app" "$prefix" "$sha1" "${APP_IMAGES[@]}"
    timed rerun "$tool" "$round" "$app" "$prefix" "$sha1" "${APP_IMAGES[@]}"
    "$(ecr_build_python)" scripts/bench/fixtures.py change "$app" "$CHANGED_IMAGE" --nonce "$sha2" >/dev/null
    timed one-changed "$tool" "$round" "$app" "$prefix" "$sha2" "${APP_IMAGES[@]}"
    # The same change on a new host, as CodeBuild gives every build by default: no build cache, no
    # images. The shell rebuilds all three images; ecr-build finds two unchanged in the registry.
    local sha3
    sha3=$(new_sha)
    "$(ecr_build_python)" scripts/bench/fixtures.py change "$app" "$CHANGED_IMAGE" --nonce "$sha3" >/dev/null
    reset_engine
    timed one-changed-fresh "$tool" "$round" "$app" "$prefix" "$sha3" "${APP_IMAGES[@]}"

    # The large contexts are one tree for every run (copying 200 MB per run would dominate); their
    # VERSION files carry the round and the tool, so each round's images are new.
    local name
    for name in "${LARGE_IMAGES[@]}"; do
        printf '%s %s\n' "$round" "$tool" >"$work/large/$name/VERSION"
    done
    write_config "$work/large" "$prefix" "${LARGE_IMAGES[@]}"
    reset_engine
    timed large-first "$tool" "$round" "$work/large" "$prefix" "$sha1" "${LARGE_IMAGES[@]}"
    timed large-rerun "$tool" "$round" "$work/large" "$prefix" "$sha1" "${LARGE_IMAGES[@]}"
    "$(ecr_build_python)" scripts/bench/fixtures.py change-large "$work/large/big" --nonce "$sha2" >/dev/null
    timed large-one-changed "$tool" "$round" "$work/large" "$prefix" "$sha2" "${LARGE_IMAGES[@]}"

    local mono=$work/mono-r$round-$tool
    cp -a "$work/mono-r$round" "$mono"
    LAYOUT=monorepo write_config "$mono" "$prefix" "${MONOREPO_IMAGES[@]}"
    reset_engine
    LAYOUT=monorepo timed mono-first "$tool" "$round" "$mono" "$prefix" "$sha1" "${MONOREPO_IMAGES[@]}"
    LAYOUT=monorepo timed mono-rerun "$tool" "$round" "$mono" "$prefix" "$sha1" "${MONOREPO_IMAGES[@]}"
    "$(ecr_build_python)" scripts/bench/fixtures.py change-service "$mono" "${MONOREPO_IMAGES[0]}" --nonce "$sha2" >/dev/null
    LAYOUT=monorepo timed mono-one-changed "$tool" "$round" "$mono" "$prefix" "$sha2" "${MONOREPO_IMAGES[@]}"
    rm -rf "$app" "$mono"
}

# One multi-platform app: FROM scratch, the target's busybox, a RUN step that works a little and
# writes the machine it ran on.
platforms_app() {
    local app=$1 prefix=$2 arm64=$3 nonce=$4
    mkdir -p "$app/bin"
    cp /bin/busybox "$app/bin/busybox-amd64"
    cp "$arm64" "$app/bin/busybox-arm64"
    printf '%s\n' 'FROM scratch' 'ARG TARGETARCH' 'COPY bin/busybox-${TARGETARCH} /bin/busybox' \
        "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox dd if=/dev/zero bs=1M count=64 2>/dev/null | /bin/busybox sha256sum > /work && /bin/busybox uname -m > /arch && echo $nonce > /nonce\"]" \
        >"$app/Dockerfile"
    printf 'tags = ["{short_sha}"]\nnetwork = "none"\nplatforms = ["linux/amd64", "linux/arm64"]\n[images.app]\nrepository = "%s/app"\n' \
        "$prefix" >"$app/ecr-build.toml"
    create_repositories "$prefix" app
}

# The fresh-host cache app: a dependency stage that takes seconds and is not in the final image,
# then a short "compile" of src/ in the final stage.
cache_app() {
    local app=$1 nonce=$2 mb=$3
    mkdir -p "$app/src"
    printf '%s\n' "FROM $ECR_BUILD_BASE_IMAGE_NAME AS deps" 'COPY deps.txt /deps.txt' \
        "RUN dd if=/dev/zero bs=1M count=$mb 2>/dev/null | sha256sum > /deps.out && cat /deps.txt >> /deps.out" \
        "FROM $ECR_BUILD_BASE_IMAGE_NAME" 'COPY --from=deps /deps.out /deps.out' 'COPY src /src' \
        'RUN cat /src/* /deps.out | sha256sum > /build.out' >"$app/Dockerfile"
    echo "dependencies $nonce" >"$app/deps.txt"
    echo "main $nonce" >"$app/src/main.sh"
}

# The engine pushes (load, then docker push) or BuildKit pushes (the image exporter's push=true):
# build and push of the same new 64 MB layer, timed together.
measure_push_path() {
    local dc round way app ref t0 secs
    dc=$(mktemp -d "$work/docker-config.XXXXXX")
    mkdir -p "$dc/cli-plugins"
    ln -s "$BUILDX" "$dc/cli-plugins/docker-buildx"
    printf '%s' "$ECR_BUILD_TEST_REGISTRY_PASSWORD" |
        DOCKER_CONFIG=$dc docker_cli login -u "$ECR_BUILD_TEST_REGISTRY_USER" --password-stdin "$registry" >/dev/null 2>&1 ||
        die "docker login to the test registry failed"
    for ((round = 1; round <= rounds; round++)); do
        for way in engine-push buildkit-push; do
            app=$work/push-r$round-$way
            mkdir -p "$app"
            head -c $((64 << 20)) /dev/urandom >"$app/blob"
            printf 'FROM %s\nCOPY blob /blob\n' "$ECR_BUILD_BASE_IMAGE_NAME" >"$app/Dockerfile"
            create_repositories "bench-push-r$round" "$way"
            ref=$registry/bench-push-r$round/$way:1
            t0=$EPOCHREALTIME
            if [[ $way == engine-push ]]; then
                DOCKER_CONFIG=$dc docker_cli buildx build --network none --load -t "$ref" "$app" &&
                    DOCKER_CONFIG=$dc docker_cli push -q "$ref"
            else
                DOCKER_CONFIG=$dc docker_cli buildx build --network none --provenance=false \
                    --output "type=image,name=$ref,push=true" "$app"
            fi >"$out_dir/logs/r$round-$way.log" 2>&1 || die "$way failed (log: $out_dir/logs/r$round-$way.log)"
            secs=$(seconds_between "$t0" "$EPOCHREALTIME")
            printf 'push-path\t%s\t%s\t%s\t\n' "$way" "$round" "$secs" >>"$times"
            log "round $round  push path $(printf '%-14s %7.2f s' "$way" "$secs")"
            rm -rf "$app"
        done
    done
    rm -rf "$dc"
}

measure_cache() {
    local mb=3000
    ((quick)) && mb=1500
    local round i tool prefix app sha logf t0 secs rc step
    local -a tools=(ecr-build bake-cache ecr-build-inline)
    for ((round = 1; round <= rounds; round++)); do
        for ((i = 0; i < ${#tools[@]}; i++)); do
            tool=${tools[$(((i + round) % ${#tools[@]}))]}
            prefix=bench-cache-r$round-$tool
            app=$work/cache-r$round-$tool/app
            cache_app "$app" "$round-$tool" "$mb"
            create_repositories "$prefix" app
            for step in first fresh-one-changed; do
                sha=$(new_sha)
                logf=$out_dir/logs/r$round-cache-$step-$tool.log
                rm -f "$app/../imagedefinitions.json"
                reset_engine
                [[ $step == first ]] || echo "main $round-$tool changed" >"$app/src/main.sh"
                rc=0
                t0=$EPOCHREALTIME
                case $tool in
                ecr-build | ecr-build-inline)
                    write_config "$app/.." "$prefix" app
                    local -a extra=()
                    [[ $tool == ecr-build-inline ]] && extra=(--cache inline)
                    CODEBUILD_RESOLVED_SOURCE_VERSION=$sha "$bin" build --config "$app/../ecr-build.toml" \
                        --registry "$registry" --output-dir "$app/.." "${extra[@]}" \
                        >"${logf%.log}.summary" 2>"$logf" || rc=$?
                    ;;
                bake-cache) REGISTRY_CACHE=1 run_tool bake "$app/.." "$prefix" "$sha" "$logf" app || rc=$? ;;
                esac
                secs=$(seconds_between "$t0" "$EPOCHREALTIME")
                if ((rc != 0)); then
                    tail -n 30 "$logf" >&2
                    die "$tool failed in the cache scenario, round $round (exit $rc)"
                fi
                verify_run "$tool" "$app/.." "$prefix" "$sha" "$logf" app
                printf 'cache-%s\t%s\t%s\t%s\t\n' "$step" "$tool" "$round" "$secs" >>"$times"
                log "round $round  cache-$step $(printf '%-17s %7.2f s' "$tool" "$secs")"
            done
        done
    done
}

# platform_run LOG SHA DOCKER_HOST [ARGS...]: one ecr-build run of the multi-platform app.
platform_run() {
    local logf=$1 sha=$2 host=$3 app=$4
    shift 4
    DOCKER_HOST=$host CODEBUILD_RESOLVED_SOURCE_VERSION=$sha "$bin" build --config "$app/ecr-build.toml" \
        --registry "$registry" --output-dir "$app" "$@" >"${logf%.log}.summary" 2>"$logf" || {
        tail -n 30 "$logf" >&2
        die "multi-platform run failed (log: $logf)"
    }
}

measure_platforms() {
    local arm64
    arm64=$(ecr_build_enable_arm64) || die "cannot set up arm64 emulation"
    local -a hosts=()
    local dir
    for _ in 1 2; do
        dir=$(mktemp -d /tmp/ecrp.XXXXXX)
        ecr_build_start_dockerd "$dir" || die "cannot start a second engine"
        hosts+=("$dir")
    done
    local round app sha t0 secs parallel
    for ((round = 1; round <= rounds; round++)); do
        app=$work/platforms-one-r$round
        sha=$(new_sha)
        platforms_app "$app" "bench-platforms-one-r$round" "$arm64" "$sha"
        t0=$EPOCHREALTIME
        platform_run "$out_dir/logs/r$round-platforms-one-run.log" "$sha" "$DOCKER_HOST" "$app"
        secs=$(seconds_between "$t0" "$EPOCHREALTIME")
        printf 'platforms-one-run\tecr-build\t%s\t%s\t\n' "$round" "$secs" >>"$times"
        log "round $round  two platforms in one run          $secs s"

        app=$work/platforms-fan-r$round
        sha=$(new_sha)
        platforms_app "$app" "bench-platforms-fan-r$round" "$arm64" "$sha"
        t0=$EPOCHREALTIME
        platform_run "$out_dir/logs/r$round-platforms-amd64.log" "$sha" "unix://${hosts[0]}/docker.sock" \
            "$app" --platform linux/amd64 &
        local amd64_job=$!
        platform_run "$out_dir/logs/r$round-platforms-arm64.log" "$sha" "unix://${hosts[1]}/docker.sock" \
            "$app" --platform linux/arm64
        wait "$amd64_job" || die "the amd64 part failed"
        parallel=$(seconds_between "$t0" "$EPOCHREALTIME")
        t0=$EPOCHREALTIME
        platform_run "$out_dir/logs/r$round-platforms-final.log" "$sha" "$DOCKER_HOST" "$app"
        secs=$(seconds_between "$t0" "$EPOCHREALTIME")
        grep -q '^app reused ' "$out_dir/logs/r$round-platforms-final.summary" ||
            die "the final run built something (log: $out_dir/logs/r$round-platforms-final.log)"
        printf 'platforms-fan-out\tecr-build\t%s\t%s\t\n' "$round" "$(awk -v a="$parallel" -v b="$secs" 'BEGIN { printf "%.3f", a + b }')" >>"$times"
        printf 'platforms-final\tecr-build\t%s\t%s\t\n' "$round" "$secs" >>"$times"
        log "round $round  fanned out: parts $parallel s, final run $secs s"
    done
    for dir in "${hosts[@]}"; do
        ecr_build_stop_services "$dir" || true
    done
}

make_fixtures() {
    log "generating the large context ($large_files files, ~$large_mb MB) and the hashing context (~$hash_mb MB sent)"
    large_summary=$("$(ecr_build_python)" scripts/bench/fixtures.py large "$work/large/big" \
        --files "$large_files" --mb "$large_mb" --nonce 0)
    "$(ecr_build_python)" scripts/bench/fixtures.py large "$work/large/big2" \
        --files $((large_files / 4)) --mb $((large_mb / 4)) --nonce 0 >/dev/null
    local n
    for ((n = 1; n <= MONOREPO_SIZE; n++)); do
        MONOREPO_IMAGES+=("$(printf 's%02d' "$n")")
    done
    hash_summary=$("$(ecr_build_python)" scripts/bench/fixtures.py hashing "$work/hash/data" --mb "$hash_mb")
    cat >"$work/hash/ecr-build.toml" <<'EOF'
# Written by scripts/bench.sh: the context hashing / peak RSS fixture.
tags = ["{short_sha}"]
network = "none"
registry = "bench.invalid"

[images.data]
repository = "bench/hash"
context = "data"
EOF
}

# seconds_between T0 T1: seconds from one $EPOCHREALTIME to another, to the millisecond.
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

json_field() { "$(ecr_build_python)" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# Peak RSS in MB from a GNU time -v report.
max_rss_mb() { awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$1"; }

# measure_hashing: fills hash_warm_mbs, hash_cold_mbs, plan_rss, dry_rss, dry_secs.
measure_hashing() {
    local sent sha logf tf t0 t1 i
    sent=$(json_field "$hash_summary" sent_bytes)
    sha=$(new_sha)
    local -a warm=() cold=() rss=()
    # A cold run reads the files into the page cache (1 GB fits easily), so the run after it is warm.
    # Without dropping, the first run only warms the cache and is not counted.
    local mode
    local -a modes=(warmup warm warm warm warm)
    if ((drop_caches)); then
        if sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
            modes=(cold warm warm cold warm warm cold warm)
        else
            log "cannot drop the page cache here: hashing is measured warm only"
            drop_caches=0
        fi
    fi
    for i in "${!modes[@]}"; do
        mode=${modes[$i]}
        logf=$out_dir/logs/hashing-$i-$mode.log
        tf=$work/time-$i.txt
        if [[ $mode == cold ]]; then
            sync
            echo 3 >/proc/sys/vm/drop_caches
        fi
        t0=$EPOCHREALTIME
        CODEBUILD_RESOLVED_SOURCE_VERSION=$sha /usr/bin/time -v -o "$tf" \
            "$bin" plan --config "$work/hash/ecr-build.toml" >"$logf" 2>&1 ||
            die "ecr-build plan failed (log: $logf)"
        t1=$EPOCHREALTIME
        local mbs
        mbs=$(awk -v s="$sent" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", s / 1e6 / (b - a) }')
        rss+=("$(max_rss_mb "$tf")")
        case $mode in
        cold) cold+=("$mbs") ;;
        warm) warm+=("$mbs") ;;
        esac
        log "hashing $i ($mode): $mbs MB/s, peak RSS $(max_rss_mb "$tf") MB"
    done
    hash_warm_mbs=$(printf '%s\n' "${warm[@]}" | median)
    hash_cold_mbs=
    if ((${#cold[@]})); then
        hash_cold_mbs=$(printf '%s\n' "${cold[@]}" | median)
    fi
    plan_rss=$(printf '%s\n' "${rss[@]}" | sort -g | tail -n1)

    # The dry run streams the whole context to the engine as a tar.
    reset_engine
    logf=$out_dir/logs/hashing-dry-run.log
    tf=$work/time-dry.txt
    t0=$EPOCHREALTIME
    CODEBUILD_RESOLVED_SOURCE_VERSION=$sha /usr/bin/time -v -o "$tf" \
        "$bin" build --dry-run --config "$work/hash/ecr-build.toml" --output-dir "$work/hash" >"$logf" 2>&1 ||
        die "ecr-build build --dry-run failed (log: $logf)"
    t1=$EPOCHREALTIME
    dry_rss=$(max_rss_mb "$tf")
    dry_secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    log "dry run of the hashing context: ${dry_secs} s, peak RSS $dry_rss MB"
    reset_engine
}

# The shell's pre_build login alone, timed as often as there are rounds: the fixed cost of every
# shell run (a Python start for the aws CLI, then the docker CLI), which a re-run cannot avoid.
measure_shell_login() {
    local i dc t0 t1
    local -a secs=()
    for ((i = 1; i <= rounds; i++)); do
        dc=$(mktemp -d "$work/docker-config.XXXXXX")
        t0=$EPOCHREALTIME
        {
            "$AWSCLI_VENV/bin/aws" ecr get-login-password |
                DOCKER_CONFIG=$dc "$DOCKER_CLI" login --username AWS --password-stdin "$registry"
        } >"$out_dir/logs/shell-login-$i.log" 2>&1 || die "the shell's docker login failed (log: $out_dir/logs/shell-login-$i.log)"
        t1=$EPOCHREALTIME
        rm -rf "$dc"
        secs+=("$(seconds_between "$t0" "$t1")")
    done
    shell_login_secs=$(printf '%s\n' "${secs[@]}" | median)
    log "shell login alone: median $shell_login_secs s"
}

# The median of the numbers on stdin.
median() { "$(ecr_build_python)" scripts/bench/report.py --median; }

# How busy the CPUs are (all of them, in percent) over the next second, from /proc/stat.
cpu_busy_percent() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
        printf "%d\n", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}

machine_line() {
    local mem cpu docker_v driver aws_v source
    mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
    cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
    docker_v=$(docker_cli version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
    driver=$(docker_cli info --format '{{.Driver}}' 2>/dev/null || echo '?')
    aws_v=$("$AWSCLI_VENV/bin/aws" --version 2>&1 | awk '{ print $1 }')
    if [[ $bin == "$repo_root/target/release/ecr-build" ]]; then
        source="release build of $(git -C "$repo_root" describe --always --dirty 2>/dev/null || echo 'this tree')"
    else
        source=$bin
    fi
    printf 'nproc %s, %s, %s, kernel %s, docker %s (%s, BuildKit), %s, ecr-build %s (%s); CPUs %s%% busy in the second before the run, %s%% after it' \
        "$(nproc)" "$mem" "$cpu" "$(uname -r)" "$docker_v" "$driver" "$aws_v" \
        "$("$bin" --version | awk '{ print $2 }')" "$source" "$load_at_start" "$load_at_end"
}

# The run's facts besides times.tsv, as JSON, for scripts/bench/report.py: NAME VALUE pairs.
facts_json() {
    "$(ecr_build_python)" -c '
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
for key in ("large_summary", "hash_summary"):
    args[key] = json.loads(args[key]) if args.get(key) else {}
for key in ("hash_warm_mbs", "plan_rss", "dry_rss"):
    args[key] = float(args[key]) if args.get(key) else 0.0
args["nproc"] = int(args["nproc"])
args["monorepo_size"] = int(args["monorepo_size"])
print(json.dumps(args))
' "$@"
}

# report [--platforms-only]: the table on stdout and as Markdown in target/bench/results.md;
# scripts/bench/report.py computes the statistics.
report() {
    local facts=$out_dir/facts.json
    facts_json \
        invocation "$invocation" date "$(date -u +%Y-%m-%d)" machine "$(machine_line)" \
        rounds "$rounds" monorepo_size "$MONOREPO_SIZE" nproc "$(nproc)" \
        docker_version "$(docker_cli version --format '{{.Server.Version}}' 2>/dev/null)" \
        buildx_version "$("$BUILDX" version 2>/dev/null | awk '{ print $2 }')" \
        large_summary "${large_summary:-}" hash_summary "${hash_summary:-}" \
        hash_warm_mbs "${hash_warm_mbs:-}" hash_cold_mbs "${hash_cold_mbs:-}" \
        plan_rss "${plan_rss:-}" dry_rss "${dry_rss:-}" dry_secs "${dry_secs:-}" \
        shell_login_secs "${shell_login_secs:-}" >"$facts"
    "$(ecr_build_python)" scripts/bench/report.py "$times" "$facts" "$out_dir/results.md" "$@"
    log "wrote $out_dir/results.md, $times and $out_dir/logs/"
}

main() {
    parse_args "$@"
    install_deps
    build_binary
    # Anything else busy on the machine skews every number: say so.
    load_at_start=$(cpu_busy_percent)
    if ((load_at_start > 10)); then
        log "warning: the CPUs were ${load_at_start}% busy before the benchmark; other work on this machine skews the numbers"
    fi

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$out_dir/logs"
    mkdir -p "$out_dir/logs"
    times=$out_dir/times.tsv
    printf 'scenario\ttool\tround\tseconds\tecr-build summary\n' >"$times"
    work=$(mktemp -d "${TMPDIR:-/tmp}/ecrb-bench.XXXXXX")
    start_services
    if ((platforms_only)); then
        measure_platforms
        load_at_end=$(cpu_busy_percent)
        report --platforms-only
        return
    fi
    if ((cache_only)); then
        if docker_cli info --format '{{json .DriverStatus}}' | grep -q io.containerd.snapshotter; then
            measure_cache
        else
            log "the classic image store cannot export a cache: measuring who pushes only"
        fi
        measure_push_path
        load_at_end=$(cpu_busy_percent)
        report --cache-only
        return
    fi
    make_fixtures

    local round sha1 sha2
    local started=$SECONDS
    for ((round = 1; round <= rounds; round++)); do
        sha1=$(new_sha)
        sha2=$(new_sha)
        "$(ecr_build_python)" scripts/bench/fixtures.py app "$work/app-r$round" --nonce "$round" >/dev/null
        "$(ecr_build_python)" scripts/bench/fixtures.py monorepo "$work/mono-r$round" \
            --images "$MONOREPO_SIZE" --nonce "$round" >/dev/null
        local i tool
        for ((i = 0; i < ${#TOOLS[@]}; i++)); do
            tool=${TOOLS[$(((i + round) % ${#TOOLS[@]}))]}
            run_round_for "$tool" "$round" "$sha1" "$sha2"
        done
        rm -rf "$work/app-r$round" "$work/mono-r$round"
    done
    log "rounds took $((SECONDS - started)) s; measuring the shell's login alone, then context hashing"
    measure_shell_login
    measure_hashing
    log "multi-platform: one run, and fanned out over two engines"
    measure_platforms
    load_at_end=$(cpu_busy_percent)
    report
}

main "$@"
