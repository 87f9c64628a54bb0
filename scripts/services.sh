# shellcheck shell=bash
# Test services for ecr-build: a private dockerd, a registry with basic auth and a moto server.
#
# Source this file; it defines functions and changes no shell option, and every function works
# under `set -euo pipefail`:
#
#   ecr_build_install [--without-moto]   install what is missing (Debian packages, moto venv)
#   ecr_build_start_services STATE_DIR   dockerd + registry + moto on loopback, base image, STATE_DIR/env
#   ecr_build_start_dockerd STATE_DIR    only the private dockerd (used by scripts/demo.sh)
#   ecr_build_base_image [NAME]          import the busybox base image into $DOCKER_HOST, no pull
#   ecr_build_enable_arm64               QEMU's arm64 handler registered; prints arm64 busybox's path
#   ecr_build_bookworm_image             a Debian bookworm base image made with debootstrap (cached)
#   ecr_build_stop_services STATE_DIR [--keep]   stop all of the above, remove STATE_DIR
#
# Helpers the other scripts use too:
#
#   ecr_build_python                     Debian's python3 (else the one on PATH)
#   ecr_build_docker                     Debian's docker client
#   ecr_build_engine_cli                 the docker client of ECR_BUILD_ENGINE's own version
#   ecr_build_engine_is_28               whether ECR_BUILD_ENGINE is 28 or 28-containerd
#   ecr_build_engine28_dir               where Docker 28's packages are unpacked
#   ecr_build_apt_install PKG...         apt-get update and install, starting no service of theirs
#   ecr_build_pkg_installed PKG          whether a Debian package is installed
#   ecr_build_http_code CURL_ARGS...     the HTTP status curl gets
#
# Everything listens on 127.0.0.1 or on a unix socket inside STATE_DIR. Keep STATE_DIR short
# (mktemp -d /tmp/ecrb.XXXXXX): a unix socket path is limited to 107 bytes.
#
# Knobs (environment):
#   ECR_BUILD_VENV          moto's venv (default ~/.cache/ecr-build/venv)
#   ECR_BUILD_DOCKER_DATA   reuse this dockerd data-root across runs (default: a fresh one in
#                           STATE_DIR, so a test run never sees images or build cache of an earlier run)
#   ECR_BUILD_START_TIMEOUT seconds to wait for each service (default 60)
#   ECR_BUILD_ENGINE        the engine to start: 20.10 (Debian bookworm's docker.io, the default),
#                           28-containerd (Docker 28.5 with the containerd image store), or
#                           28 (Docker 28.5 as CodeBuild's current images ship it: Debian sid's
#                           docker.io, docker-cli, containerd and docker-buildx, fetched with
#                           `apt-get download` into a private folder; nothing is installed over
#                           bookworm's packages, and bookworm's runc stays, as sid's needs a newer glibc)
#
# The parts live in scripts/services/: common.sh (settings, helpers), install.sh, dockerd.sh,
# registry.sh, moto.sh, sshd.sh, images.sh; this file sources them and starts and stops the whole.

_ecr_build_services_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/services" && pwd)
for _ecr_build_part in common install dockerd registry moto sshd images; do
    # shellcheck source=/dev/null
    source "$_ecr_build_services_dir/$_ecr_build_part.sh"
done
unset _ecr_build_part

_ecr_build_write_env() {
    local sd=$1 registry moto
    registry=$(<"$sd/run/registry.addr")
    moto=$(<"$sd/run/moto.addr")
    mkdir -p "$sd/docker-config"

    # Anything that could send the SDK, the docker client or an HTTP client somewhere else.
    local -a drop=(AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
        AWS_ENDPOINT_URL_ECR AWS_ENDPOINT_URL_SSM AWS_ENDPOINT_URL_STS
        DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_API_VERSION)
    local var
    while IFS= read -r var; do
        [[ $var == AWS_ENDPOINT_URL_* ]] && drop+=("$var")
    done < <(compgen -e)

    local no_proxy_list=127.0.0.1,localhost
    [[ -n ${NO_PROXY:-} ]] && no_proxy_list+=",$NO_PROXY"

    {
        echo "# ecr-build test services; source this file"
        echo "unset ${drop[*]}"
        local -a kv=(
            "DOCKER_HOST=unix://$sd/docker.sock"
            "DOCKER_CONFIG=$sd/docker-config"
            "ECR_BUILD_TEST_REGISTRY=$registry"
            "ECR_BUILD_TEST_REGISTRY_PID=$(<"$sd/run/registry.pid")"
            "ECR_BUILD_TEST_REGISTRY_LOG=$sd/registry.log"
            "ECR_BUILD_TEST_REGISTRY_USER=$ECR_BUILD_REGISTRY_USER"
            "ECR_BUILD_TEST_REGISTRY_PASSWORD=$ECR_BUILD_REGISTRY_PASSWORD"
            "ECR_BUILD_TEST_BASE_IMAGE=$ECR_BUILD_BASE_IMAGE_NAME"
            "ECR_BUILD_TEST_DIR=$sd"
            # The engine, and the docker CLI of its own version (with buildx for Docker 28).
            "ECR_BUILD_ENGINE=${ECR_BUILD_ENGINE:-20.10}"
            "ECR_BUILD_TEST_DOCKER_CLI=$(ecr_build_engine_cli)"
            "ECR_BUILD_TEST_BUILDX=$(_ecr_build_engine_buildx)"
            "ECR_BUILD_TEST_COMPOSE=$(ecr_build_engine28_dir)/root/usr/libexec/docker/cli-plugins/docker-compose"
            # Debian's arm64 busybox-static; QEMU runs it (ecr_build_enable_arm64).
            "ECR_BUILD_TEST_BUSYBOX_ARM64=$(<"$sd/run/busybox-arm64")"
            # The same engine over TLS (client certificates in tls/client; tls/wrong-ca trusts
            # another CA) and through ssh (PATH=ssh/bin or ssh/wrong-key first, user root).
            "ECR_BUILD_TEST_TLS_HOST=tcp://127.0.0.1:$(<"$sd/run/tls.port")"
            "ECR_BUILD_TEST_TLS_CERTS=$sd/tls/client"
            "ECR_BUILD_TEST_TLS_WRONG_CA=$sd/tls/wrong-ca"
            "ECR_BUILD_TEST_SSH_HOST=ssh://root@127.0.0.1:$(<"$sd/run/sshd.port")"
            "ECR_BUILD_TEST_SSH_BIN=$sd/ssh/bin"
            "ECR_BUILD_TEST_SSH_WRONG_KEY_BIN=$sd/ssh/wrong-key"
            # The engine's cgroup parent: a Docker engine started inside a test's container nests
            # its cgroups below it, so that stopping the services removes them too.
            "ECR_BUILD_TEST_CGROUP_PARENT=$(<"$sd/run/cgroup-parent")"
            "AWS_ENDPOINT_URL=http://$moto"
            # For tests that need a moto of their own (IAM enforcement, faults).
            "ECR_BUILD_TEST_MOTO_SERVER=$(_ecr_build_venv_dir)/bin/moto_server"
            "AWS_ACCESS_KEY_ID=testing"
            "AWS_SECRET_ACCESS_KEY=testing"
            "AWS_REGION=us-east-1"
            "AWS_DEFAULT_REGION=us-east-1"
            # No ~/.aws files, and never the instance metadata service (a link-local address).
            "AWS_CONFIG_FILE=$sd/aws-config-absent"
            "AWS_SHARED_CREDENTIALS_FILE=$sd/aws-credentials-absent"
            "AWS_EC2_METADATA_DISABLED=true"
            "NO_PROXY=$no_proxy_list"
            "no_proxy=$no_proxy_list"
        )
        local pair
        for pair in "${kv[@]}"; do
            printf 'export %s=%q\n' "${pair%%=*}" "${pair#*=}"
        done
    } >"$sd/env"
}

# Start dockerd (with a TLS listener too), the registry, moto and sshd, import the base image and
# write STATE_DIR/env.
ecr_build_start_services() {
    local sd=${1:?usage: ecr_build_start_services STATE_DIR}
    _ecr_build_check_state_dir "$sd" || return 1
    _ecr_build_make_certs "$sd" || return 1
    local tls_port
    tls_port=$(_ecr_build_free_port) || return 1
    echo "$tls_port" >"$sd/run/tls.port"
    ECR_BUILD_DOCKERD_TLS_PORT=$tls_port ecr_build_start_dockerd "$sd" || return 1
    _ecr_build_start_sshd "$sd" || return 1
    ecr_build_enable_arm64 >"$sd/run/busybox-arm64" || return 1
    _ecr_build_start_registry "$sd" || return 1
    _ecr_build_start_moto "$sd" || return 1
    DOCKER_HOST="unix://$sd/docker.sock" ecr_build_base_image "$ECR_BUILD_BASE_IMAGE_NAME" || return 1
    _ecr_build_write_env "$sd"
    _ecr_build_log "services ready; environment in $sd/env"
}

_ecr_build_stop_pid() {
    local name=$1 pid=$2 needle=$3 timeout=${4:-10}
    _ecr_build_alive "$pid" "$needle" || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)) && _ecr_build_alive "$pid"; do
        sleep 0.1
    done
    if _ecr_build_alive "$pid"; then
        _ecr_build_log "$name ($pid) did not stop within ${timeout}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    # Reap it if it is our child, so no zombie is left behind.
    wait "$pid" 2>/dev/null || true
}

# Processes that still mention STATE_DIR on their command line: containerd and its shims after a
# killed dockerd.
_ecr_build_leftover_pids() {
    local sd=$1 dir pid comm
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        comm=$(cat "$dir/comm" 2>/dev/null) || continue
        case $comm in
        dockerd | containerd | containerd-shim* | runc | docker-registry | docker-proxy | sshd) ;;
        *) continue ;;
        esac
        if tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -qF -- "$sd/"; then
            echo "$pid"
        fi
    done
}

# Kill every process in the cgroup NAME (under any controller) and remove those cgroups.
_ecr_build_kill_cgroup() {
    local name=$1 dir pid
    [[ -n $name && -d /sys/fs/cgroup ]] || return 0
    local -a dirs=()
    mapfile -t dirs < <(find /sys/fs/cgroup -maxdepth 6 -type d -name "$name" 2>/dev/null)
    ((${#dirs[@]})) || return 0
    for _ in 1 2 3; do
        local -a pids=()
        mapfile -t pids < <(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
        ((${#pids[@]})) || break
        _ecr_build_log "killing ${#pids[@]} leftover container process(es)"
        for pid in "${pids[@]}"; do
            kill -KILL "$pid" 2>/dev/null || true
        done
        sleep 0.3
    done
    # Deepest first; a cgroup can be removed once it has no process.
    find "${dirs[@]}" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

_ecr_build_unmount_under() {
    local dir=$1 mnt
    # Deepest first; field 5 of mountinfo is the mount point.
    while IFS= read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v p="$dir/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

# Stop everything ecr_build_start_services (or ecr_build_start_dockerd) started in STATE_DIR and
# remove STATE_DIR, unless --keep is given. Safe to call twice, or after a failed start.
ecr_build_stop_services() {
    local sd=${1:?usage: ecr_build_stop_services STATE_DIR [--keep]}
    local keep=0
    [[ ${2:-} == --keep ]] && keep=1
    [[ -d $sd ]] || return 0
    local pid
    if [[ -f $sd/run/moto.pid ]]; then
        _ecr_build_stop_pid moto_server "$(<"$sd/run/moto.pid")" "moto_server" 10
    fi
    if [[ -f $sd/run/registry.pid ]]; then
        _ecr_build_stop_pid docker-registry "$(<"$sd/run/registry.pid")" "$sd/registry.yml" 10
    fi
    if [[ -f $sd/run/dockerd.pid ]]; then
        _ecr_build_log "stopping dockerd"
        _ecr_build_stop_pid dockerd "$(<"$sd/run/dockerd.pid")" "$sd/docker.sock" 30
    fi
    if [[ -f $sd/run/containerd.pid ]]; then
        _ecr_build_stop_pid containerd "$(<"$sd/run/containerd.pid")" "$sd/containerd" 10
    fi
    if [[ -f $sd/run/sshd.pid ]]; then
        _ecr_build_stop_pid sshd "$(<"$sd/run/sshd.pid")" "$sd/ssh/sshd_config" 5
    fi
    # Whatever survived: a killed dockerd's containerd and shims, a registry restarted by a test.
    local -a left=()
    mapfile -t left < <(_ecr_build_leftover_pids "$sd")
    for pid in "${left[@]}"; do
        _ecr_build_stop_pid "leftover process" "$pid" "$sd/" 5
    done

    [[ -f $sd/run/cgroup-parent ]] && _ecr_build_kill_cgroup "$(<"$sd/run/cgroup-parent")"

    _ecr_build_unmount_under "$sd"
    local data_root=
    [[ -f $sd/run/docker-data-root ]] && data_root=$(<"$sd/run/docker-data-root")
    [[ -n $data_root ]] && _ecr_build_unmount_under "$data_root"

    if ((keep)); then
        _ecr_build_log "kept $sd (logs: $sd/*.log)"
    else
        rm -rf --one-file-system "$sd" || _ecr_build_err "could not remove $sd entirely"
    fi
}

# Run as a program rather than sourced: a small front end for keeping services up while iterating
# with plain `cargo test`:
#   scripts/services.sh start [STATE_DIR]   (prints the env file to source)
#   scripts/services.sh stop STATE_DIR
#   scripts/services.sh registry DIR [PORT] (one more registry, as the shared one is started, with
#                                           its storage in DIR; prints its address; the e2e tests'
#                                           registry of their own, which they stop and start again)
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    start)
        # shellcheck disable=SC2119 # no arguments: everything, moto included
        ecr_build_install
        _ecr_build_sd=${2:-$(mktemp -d /tmp/ecrb.XXXXXX)}
        if ! ecr_build_start_services "$_ecr_build_sd"; then
            ecr_build_stop_services "$_ecr_build_sd" --keep
            exit 1
        fi
        printf 'source %s/env   # stop with: %s stop %s\n' "$_ecr_build_sd" "$0" "$_ecr_build_sd"
        ;;
    stop) ecr_build_stop_services "${2:?usage: $0 stop STATE_DIR}" ;;
    registry)
        _ecr_build_start_registry "${2:?usage: $0 registry DIR [PORT]}" "${3:-}"
        cat "$2/run/registry.addr"
        ;;
    *)
        echo "usage: $0 start [STATE_DIR] | stop STATE_DIR | registry DIR [PORT]   (or source this file)" >&2
        exit 2
        ;;
    esac
fi
