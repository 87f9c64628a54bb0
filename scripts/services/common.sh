# shellcheck shell=bash
# The settings and small helpers every part shares: logging, python, the docker client, apt,
# ports, processes, waiting for a service to answer.
# Sourced by scripts/services.sh; see its header.

# The moto release the harness is verified against (moto 5.2.1: ECR + SSM as in shared/stack-notes.md).
ECR_BUILD_MOTO_VERSION=5.2.1
# Name of the busybox image that test Dockerfiles build FROM (nothing can be pulled here).
ECR_BUILD_BASE_IMAGE_NAME=ecr-build-test/busybox:base
# Credentials that moto's ECR authorization token decodes to; the registry accepts exactly these.
ECR_BUILD_REGISTRY_USER=AWS
ECR_BUILD_REGISTRY_PASSWORD=123456789012-auth-token
# Whether ECR_BUILD_ENGINE is a Docker 28: 28 (the classic image store, as CodeBuild starts it) or
# 28-containerd (the containerd image store, which can export BuildKit's cache).
ecr_build_engine_is_28() {
    [[ ${ECR_BUILD_ENGINE:-20.10} == 28 || ${ECR_BUILD_ENGINE:-20.10} == 28-containerd ]]
}

# Where Docker 28's packages are unpacked (ECR_BUILD_ENGINE=28 or 28-containerd).
ecr_build_engine28_dir() {
    echo "${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ecr-build/docker-28"
}
# Bump when the base image recipe below changes, so that a reused data-root gets the new image.
_ECR_BUILD_BASE_RECIPE=1

_ecr_build_log() { printf '==> %s\n' "$*" >&2; }
_ecr_build_err() { printf 'error: %s\n' "$*" >&2; }

# Debian's python3 first: on these machines `python3` may be a pyenv shim, and the venv must not
# depend on a python that a later session might not have.
ecr_build_python() {
    if [[ -x /usr/bin/python3 ]]; then
        echo /usr/bin/python3
    else
        command -v python3
    fi
}

# Debian's docker client (from docker.io). /usr/local/bin/docker may be a newer, unrelated client.
ecr_build_docker() {
    local cli=/usr/bin/docker
    [[ -x $cli ]] || cli=$(command -v docker) || {
        _ecr_build_err "no docker client found (install Debian's docker.io)"
        return 1
    }
    # Variables that would redirect or reconfigure the client away from $DOCKER_HOST.
    env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u DOCKER_API_VERSION "$cli" "$@"
}

_ecr_build_venv_dir() {
    echo "${ECR_BUILD_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ecr-build/venv}"
}

ecr_build_apt_install() {
    local -a pkgs=("$@")
    _ecr_build_log "installing Debian packages: ${pkgs[*]}"
    # A package's maintainer script must not start its own docker or registry service: the harness
    # runs private instances. policy-rc.d is Debian's switch for that; only add it if none exists.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    # With recommends, as on the machines where this harness was verified (apparmor, git, xz-utils).
    # apt's chatter (debconf, needrestart) goes to a log that is shown only if something fails.
    local log rc=0
    log=$(mktemp "${TMPDIR:-/tmp}/ecrb-apt.XXXXXX")
    (
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
        apt-get -qq -o DPkg::Lock::Timeout=300 update &&
            apt-get -qq -y -o DPkg::Lock::Timeout=300 install "${pkgs[@]}"
    ) >"$log" 2>&1 || rc=$?
    ((added_policy)) && rm -f "$policy"
    if ((rc != 0)); then
        _ecr_build_err "apt-get install ${pkgs[*]} failed (exit $rc)"
        tail -n 30 "$log" >&2
    fi
    rm -f "$log"
    return "$rc"
}

ecr_build_pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

_ecr_build_free_port() {
    "$(ecr_build_python)" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True if PID is a live process (a zombie counts as dead) whose command line contains NEEDLE.
_ecr_build_alive() {
    local pid=$1 needle=${2:-} state
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]] || return 1
    [[ -z $needle ]] && return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

_ecr_build_log_tail() {
    local log=$1
    printf -- '--- last lines of %s ---\n' "$log" >&2
    tail -n 25 "$log" >&2 2>/dev/null || true
    printf -- '---\n' >&2
}

# _ecr_build_wait NAME PID LOG CHECK...: poll CHECK until it succeeds; fail early if PID exits.
_ecr_build_wait() {
    local name=$1 pid=$2 log=$3
    shift 3
    local timeout=${ECR_BUILD_START_TIMEOUT:-60}
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if "$@"; then
            return 0
        fi
        if ! _ecr_build_alive "$pid"; then
            _ecr_build_err "$name exited before it answered"
            _ecr_build_log_tail "$log"
            return 1
        fi
        sleep 0.1
    done
    _ecr_build_err "$name did not answer within ${timeout}s"
    _ecr_build_log_tail "$log"
    return 1
}

ecr_build_http_code() {
    curl -s --noproxy '*' -o /dev/null -m 2 -w '%{http_code}' "$@" 2>/dev/null || true
}
_ecr_build_docker_ping() {
    [[ $(curl -s --noproxy '*' -m 2 --unix-socket "$1" http://localhost/_ping 2>/dev/null) == OK ]]
}
_ecr_build_registry_ready() { [[ $(ecr_build_http_code "http://$1/v2/") == 401 ]]; }
_ecr_build_moto_ready() { [[ $(ecr_build_http_code "http://$1/moto-api/") =~ ^[1-5][0-9][0-9]$ ]]; }

_ecr_build_check_state_dir() {
    local sd=$1
    if [[ -z $sd || $sd != /* ]]; then
        _ecr_build_err "STATE_DIR must be an absolute path (got '${sd}')"
        return 1
    fi
    # dockerd's socket and containerd's socket (exec/containerd/containerd.sock) must fit in 107 bytes.
    if ((${#sd} > 60)); then
        _ecr_build_err "STATE_DIR '$sd' is too long for unix sockets; use e.g. mktemp -d /tmp/ecrb.XXXXXX"
        return 1
    fi
    mkdir -p "$sd/run"
}
