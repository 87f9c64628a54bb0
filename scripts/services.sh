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
#   ECR_BUILD_ENGINE        the engine to start: 20.10 (Debian bookworm's docker.io, the default) or
#                           28 (Docker 28.5 as CodeBuild's current images ship it: Debian sid's
#                           docker.io, docker-cli, containerd and docker-buildx, fetched with
#                           `apt-get download` into a private folder; nothing is installed over
#                           bookworm's packages, and bookworm's runc stays, as sid's needs a newer glibc)

# The moto release the harness is verified against (moto 5.2.1: ECR + SSM as in shared/stack-notes.md).
ECR_BUILD_MOTO_VERSION=5.2.1
# Name of the busybox image that test Dockerfiles build FROM (nothing can be pulled here).
ECR_BUILD_BASE_IMAGE_NAME=ecr-build-test/busybox:base
# Credentials that moto's ECR authorization token decodes to; the registry accepts exactly these.
ECR_BUILD_REGISTRY_USER=AWS
ECR_BUILD_REGISTRY_PASSWORD=123456789012-auth-token
# Where Docker 28's packages are unpacked (ECR_BUILD_ENGINE=28).
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

# Install only what is missing. --without-moto skips the Python venv (scripts/demo.sh needs no AWS).
# shellcheck disable=SC2120 # scripts/demo.sh passes --without-moto
ecr_build_install() {
    local with_moto=1
    [[ ${1:-} == --without-moto ]] && with_moto=0

    local -a missing=()
    local pkg
    for pkg in docker.io docker-registry busybox-static apache2-utils curl ca-certificates openssl openssh-server openssh-client debootstrap; do
        ecr_build_pkg_installed "$pkg" || missing+=("$pkg")
    done
    command -v python3 >/dev/null || [[ -x /usr/bin/python3 ]] || missing+=(python3)
    if ((with_moto)) && ! ecr_build_pkg_installed python3-venv; then
        # Debian's python3 has no ensurepip without python3-venv; another python may have it.
        local py
        py=$(ecr_build_python 2>/dev/null) || py=
        if [[ -z $py || $py == /usr/bin/python3 ]] || ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
            missing+=(python3-venv)
        fi
    fi
    if ((${#missing[@]})); then
        ecr_build_apt_install "${missing[@]}" || return 1
    fi
    if ((with_moto)); then
        _ecr_build_install_moto || return 1
    fi
    # The tests need Docker Compose 2.40 (fetched with Docker 28) whatever the engine.
    if ((with_moto)) || [[ ${ECR_BUILD_ENGINE:-20.10} == 28 ]]; then
        _ecr_build_install_engine28 || return 1
    fi
}

# Docker 28.5 from Debian sid, unpacked below $(ecr_build_engine28_dir)/root: dockerd, containerd
# and its shim, the docker CLI, the buildx plugin, and Docker Compose 2.40 (the tests' reference for
# reading Compose files). Skipped when already there.
_ecr_build_install_engine28() {
    local dir root
    dir=$(ecr_build_engine28_dir)
    root=$dir/root
    if [[ -x $root/usr/sbin/dockerd && -x $root/usr/bin/containerd && -x $root/usr/bin/docker &&
        -x $root/usr/libexec/docker/cli-plugins/docker-buildx &&
        -x $root/usr/libexec/docker/cli-plugins/docker-compose ]]; then
        return 0
    fi
    _ecr_build_log "fetching Docker 28 (docker.io, docker-cli, containerd, docker-buildx, docker-compose) from Debian sid into $dir"
    local apt=$dir/apt
    rm -rf "${dir:?}"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dir/debs" "$root"
    echo "deb http://deb.debian.org/debian sid main" >"$apt/sources.list"
    local -a opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
    local log=$dir/apt.log
    if ! apt-get -q "${opts[@]}" update >"$log" 2>&1 ||
        ! (cd "$dir/debs" && apt-get -q "${opts[@]}" download docker.io docker-cli containerd docker-buildx docker-compose) >>"$log" 2>&1; then
        _ecr_build_err "could not fetch Docker 28 from Debian sid"
        tail -n 20 "$log" >&2
        return 1
    fi
    local deb
    for deb in "$dir"/debs/*.deb; do
        dpkg-deb -x "$deb" "$root" || return 1
    done
    rm -rf "$apt" "$dir/debs"
    _ecr_build_log "Docker 28 ready: $("$root/usr/sbin/dockerd" --version)"
}

# containerd for Docker 28, on STATE_DIR/containerd/c.sock. Its PATH puts bookworm's runc first.
_ecr_build_start_containerd28() {
    local sd=$1 root=$2
    local dir=$sd/containerd log=$sd/containerd.log
    mkdir -p "$dir" "$sd/bin"
    ln -sf /usr/sbin/runc "$sd/bin/runc"
    printf '%s\n' 'version = 3' "root = \"$dir/root\"" "state = \"$dir/state\"" \
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]' \
        '[grpc]' "address = \"$dir/c.sock\"" >"$dir/config.toml"
    PATH="$sd/bin:$root/usr/bin:$root/usr/sbin:$PATH" "$root/usr/bin/containerd" --config "$dir/config.toml" \
        </dev/null >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$sd/run/containerd.pid"
    _ecr_build_wait containerd "$pid" "$log" test -S "$dir/c.sock"
}

_ecr_build_install_moto() {
    local venv want have
    venv=$(_ecr_build_venv_dir)
    want=$ECR_BUILD_MOTO_VERSION
    # Reuse the venv when it already has this moto with the server extras importable.
    have=$("$venv/bin/python" -c '
import importlib.metadata as m
import moto.server, flask, flask_cors  # noqa: F401  (the [server] extra)
print(m.version("moto"))' 2>/dev/null) || have=
    if [[ $have == "$want" && -x $venv/bin/moto_server ]]; then
        return 0
    fi
    _ecr_build_log "installing moto[server]==$want into $venv"
    local py
    py=$(ecr_build_python) || {
        _ecr_build_err "python3 not found"
        return 1
    }
    mkdir -p "$(dirname "$venv")"
    # --clear only when the venv's own python is broken (e.g. its base python is gone).
    if ! "$venv/bin/python" -c '' 2>/dev/null; then
        "$py" -m venv --clear "$venv" || {
            _ecr_build_err "could not create the venv $venv with $py"
            return 1
        }
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$want" || {
        _ecr_build_err "pip install moto[server]==$want failed"
        return 1
    }
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

# Start a private dockerd on unix://STATE_DIR/docker.sock. Prints nothing on stdout.
ecr_build_start_dockerd() {
    local sd=${1:?usage: ecr_build_start_dockerd STATE_DIR}
    _ecr_build_check_state_dir "$sd" || return 1
    local sock=$sd/docker.sock log=$sd/dockerd.log
    local data_root=${ECR_BUILD_DOCKER_DATA:-$sd/docker-data}
    mkdir -p "$data_root" "$sd/exec"

    # A reused data-root must never be shared by two daemons: take a lock that dockerd itself
    # inherits and so holds for its whole life.
    local lock_fd=
    if [[ -n ${ECR_BUILD_DOCKER_DATA:-} ]]; then
        exec {lock_fd}>"$data_root.lock"
        if ! flock -n "$lock_fd"; then
            exec {lock_fd}>&-
            _ecr_build_err "$data_root is in use by another dockerd (lock $data_root.lock); unset ECR_BUILD_DOCKER_DATA"
            return 1
        fi
    fi

    _ecr_build_log "starting dockerd on unix://$sock (data-root $data_root)"
    # --bridge=none: no network exists for builds but `none` (and host), which is what tests use.
    # --shutdown-timeout=3: a container a test left running delays the stop by 3 s, not 15.
    # The containerd namespaces are per run so that, should dockerd attach to a system containerd
    # (it does when /run/containerd/containerd.sock exists), it cannot touch another daemon's containers.
    # The cgroup parent is per run too: every container and BuildKit RUN step of this daemon lands in
    # it, so ecr_build_stop_services can find their processes even after dockerd was killed.
    local ns
    ns=ecrb$(basename "$sd" | tr -cd 'a-zA-Z0-9')
    # /usr/sbin may be missing from a non-login PATH.
    local dockerd=/usr/sbin/dockerd engine_path=$PATH
    local -a engine_flags=()
    if [[ ${ECR_BUILD_ENGINE:-20.10} == 28 ]]; then
        local root
        root=$(ecr_build_engine28_dir)/root
        [[ -x $root/usr/sbin/dockerd ]] || _ecr_build_install_engine28 || return 1
        _ecr_build_start_containerd28 "$sd" "$root" || return 1
        dockerd=$root/usr/sbin/dockerd
        engine_path="$sd/bin:$root/usr/bin:$root/usr/sbin:$PATH"
        engine_flags=(--containerd="$sd/containerd/c.sock")
    fi
    [[ -x $dockerd ]] || dockerd=$(command -v dockerd) || {
        _ecr_build_err "dockerd not found (install Debian's docker.io)"
        return 1
    }
    # ECR_BUILD_DOCKERD_TLS_PORT: also listen on tcp://127.0.0.1:PORT with TLS, client certificates
    # required, using the certificates in STATE_DIR/tls (see _ecr_build_make_certs).
    if [[ -n ${ECR_BUILD_DOCKERD_TLS_PORT:-} ]]; then
        engine_flags+=(--tlsverify --tlscacert="$sd/tls/ca.pem" --tlscert="$sd/tls/server-cert.pem"
            --tlskey="$sd/tls/server-key.pem" --host="tcp://127.0.0.1:$ECR_BUILD_DOCKERD_TLS_PORT")
    fi
    PATH=$engine_path "$dockerd" "${engine_flags[@]}" \
        --host="unix://$sock" \
        --data-root="$data_root" \
        --exec-root="$sd/exec" \
        --pidfile="$sd/docker.pid" \
        --containerd-namespace="$ns" \
        --containerd-plugins-namespace="$ns-plugins" \
        --iptables=false \
        --ip-masq=false \
        --bridge=none \
        --shutdown-timeout=3 \
        --cgroup-parent="$ns" \
        </dev/null >"$log" 2>&1 &
    local pid=$!
    [[ -n $lock_fd ]] && exec {lock_fd}>&-
    echo "$pid" >"$sd/run/dockerd.pid"
    echo "$ns" >"$sd/run/cgroup-parent"
    [[ -z ${ECR_BUILD_DOCKER_DATA:-} ]] || echo "$data_root" >"$sd/run/docker-data-root"

    _ecr_build_wait dockerd "$pid" "$log" _ecr_build_docker_ping "$sock" || return 1
}

_ecr_build_start_registry() {
    local sd=$1
    local config=$sd/registry.yml htpasswd=$sd/registry.htpasswd log=$sd/registry.log
    mkdir -p "$sd/registry-data"
    htpasswd -Bbn "$ECR_BUILD_REGISTRY_USER" "$ECR_BUILD_REGISTRY_PASSWORD" >"$htpasswd"

    # REGISTRY_* variables override the config file; none of the caller's may leak in.
    local -a unset_env=()
    local var
    while IFS= read -r var; do
        [[ $var == REGISTRY_* ]] && unset_env+=(-u "$var")
    done < <(compgen -e)

    local port pid
    for _ in 1 2 3; do
        port=$(_ecr_build_free_port) || return 1
        # A fixed http.secret lets a test stop and restart the registry without breaking uploads.
        cat >"$config" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: "$sd/registry-data"
  delete:
    enabled: true
http:
  addr: "127.0.0.1:$port"
  secret: "ecr-build-test-$port"
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: ecr-build-test
    path: "$htpasswd"
EOF
        _ecr_build_log "starting docker-registry on 127.0.0.1:$port"
        env "${unset_env[@]}" docker-registry serve "$config" </dev/null >>"$log" 2>&1 &
        pid=$!
        echo "$pid" >"$sd/run/registry.pid"
        if _ecr_build_wait docker-registry "$pid" "$log" _ecr_build_registry_ready "127.0.0.1:$port"; then
            echo "127.0.0.1:$port" >"$sd/run/registry.addr"
            return 0
        fi
        # Only a quick exit is worth a retry: the port was taken between choosing and binding it.
        if _ecr_build_alive "$pid" || ! grep -qi "address already in use" "$log"; then
            break
        fi
        _ecr_build_stop_pid docker-registry "$pid" "$config" 5
    done
    _ecr_build_stop_pid docker-registry "$pid" "$config" 5
    return 1
}

_ecr_build_start_moto() {
    local sd=$1
    local log=$sd/moto.log venv
    venv=$(_ecr_build_venv_dir)
    if [[ ! -x $venv/bin/moto_server ]]; then
        _ecr_build_err "$venv/bin/moto_server is missing; run ecr_build_install"
        return 1
    fi
    local port pid
    for _ in 1 2 3; do
        port=$(_ecr_build_free_port) || return 1
        _ecr_build_log "starting moto_server on 127.0.0.1:$port"
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >>"$log" 2>&1 &
        pid=$!
        echo "$pid" >"$sd/run/moto.pid"
        if _ecr_build_wait moto_server "$pid" "$log" _ecr_build_moto_ready "127.0.0.1:$port"; then
            echo "127.0.0.1:$port" >"$sd/run/moto.addr"
            return 0
        fi
        if _ecr_build_alive "$pid" || ! grep -qi "address already in use" "$log"; then
            break
        fi
        _ecr_build_stop_pid moto_server "$pid" "-p $port" 5
    done
    _ecr_build_stop_pid moto_server "$pid" "-p $port" 5
    return 1
}

ecr_build_engine_cli() {
    if [[ ${ECR_BUILD_ENGINE:-20.10} == 28 ]]; then
        echo "$(ecr_build_engine28_dir)/root/usr/bin/docker"
    else
        echo /usr/bin/docker
    fi
}

_ecr_build_engine_buildx() {
    [[ ${ECR_BUILD_ENGINE:-20.10} == 28 ]] || return 0
    echo "$(ecr_build_engine28_dir)/root/usr/libexec/docker/cli-plugins/docker-buildx"
}

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
            "ECR_BUILD_TEST_REGISTRY_CONFIG=$sd/registry.yml"
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

# A CA, the engine's server certificate (127.0.0.1), a client certificate in STATE_DIR/tls/client
# (ca.pem, cert.pem, key.pem as DOCKER_CERT_PATH wants them), and in STATE_DIR/tls/wrong-ca the same
# client certificate with another CA's ca.pem.
_ecr_build_make_certs() {
    local d=$1/tls
    mkdir -p "$d/client" "$d/wrong-ca"
    local -a key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    (
        cd "$d" &&
            openssl req -x509 "${key[@]}" -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=ecr-build-test-ca &&
            openssl req "${key[@]}" -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 &&
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
                -extfile server.ext -out server-cert.pem &&
            openssl req "${key[@]}" -keyout client/key.pem -out client.csr -subj /CN=ecr-build-test-client &&
            printf 'extendedKeyUsage=clientAuth\n' >client.ext &&
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
                -extfile client.ext -out client/cert.pem &&
            cp ca.pem client/ca.pem &&
            openssl req -x509 "${key[@]}" -keyout wrong-ca/ca-key.pem -out wrong-ca/ca.pem -days 2 \
                -subj /CN=another-ca &&
            cp client/cert.pem client/key.pem wrong-ca/
    ) >"$d/openssl.log" 2>&1 || {
        _ecr_build_err "openssl could not make the test certificates"
        tail -n 20 "$d/openssl.log" >&2
        return 1
    }
}

# A private sshd on 127.0.0.1 whose sessions see DOCKER_HOST=the test engine, as a remote build host
# would; and, in STATE_DIR/ssh/bin and STATE_DIR/ssh/wrong-key, an `ssh` that uses the harness's own
# key (or another one) and known_hosts, never the user's.
_ecr_build_start_sshd() {
    local sd=$1 d=$1/ssh port pid
    mkdir -p "$d/bin" "$d/wrong-key" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" &&
        ssh-keygen -q -t ed25519 -N '' -f "$d/client_key" &&
        ssh-keygen -q -t ed25519 -N '' -f "$d/wrong_key" || return 1
    cp "$d/client_key.pub" "$d/authorized_keys"
    port=$(_ecr_build_free_port) || return 1
    cat >"$d/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
SetEnv DOCKER_HOST=unix://$sd/docker.sock
EOF
    printf '127.0.0.1 %s\n[127.0.0.1]:%s %s\n' "$(cut -d' ' -f1-2 "$d/host_key.pub")" "$port" \
        "$(cut -d' ' -f1-2 "$d/host_key.pub")" >"$d/known_hosts"
    local which
    for which in bin:client_key wrong-key:wrong_key; do
        printf 'IdentityFile %s\nIdentitiesOnly yes\nUserKnownHostsFile %s\nStrictHostKeyChecking yes\n' \
            "$d/${which#*:}" "$d/known_hosts" >"$d/${which%%:*}/config"
        printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$d/${which%%:*}/config" >"$d/${which%%:*}/ssh"
        chmod 755 "$d/${which%%:*}/ssh"
    done
    _ecr_build_log "starting sshd on 127.0.0.1:$port"
    /usr/sbin/sshd -D -e -f "$d/sshd_config" </dev/null >"$sd/sshd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$sd/run/sshd.pid"
    echo "$port" >"$sd/run/sshd.port"
    _ecr_build_wait sshd "$pid" "$sd/sshd.log" _ecr_build_port_open "$port"
}

_ecr_build_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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

# Import a busybox image into the daemon at $DOCKER_HOST without pulling anything.
# Idempotent: skipped when NAME exists and was made from the same busybox by the same recipe.
ecr_build_base_image() {
    local name=${1:-$ECR_BUILD_BASE_IMAGE_NAME}
    local busybox=/bin/busybox
    if [[ ! -x $busybox ]] || ! ecr_build_pkg_installed busybox-static; then
        _ecr_build_err "Debian's busybox-static is not installed; run ecr_build_install"
        return 1
    fi
    local key label=org.ecr-build.test.base have
    key="$_ECR_BUILD_BASE_RECIPE-$(sha256sum "$busybox" | cut -c1-64)"
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ecrb-base.XXXXXX")
    # The client gets its own config dir: it must write nothing into the tests' DOCKER_CONFIG.
    have=$(DOCKER_CONFIG=$tmp/cli ecr_build_docker image inspect \
        -f "{{ index .Config.Labels \"$label\" }}" "$name" 2>/dev/null) || have=
    if [[ $have == "$key" ]]; then
        rm -rf "$tmp"
        return 0
    fi

    _ecr_build_log "creating base image $name from $busybox"
    local root=$tmp/rootfs applet
    mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp "$busybox" "$root/bin/busybox"
    # Each applet at its usual place (usr/bin/env, bin/sh, sbin/...), as a link to /bin/busybox.
    while IFS= read -r applet; do
        [[ -n $applet && ! -e $root/$applet && ! -L $root/$applet ]] || continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -s /bin/busybox "$root/$applet"
    done < <("$busybox" --list-full)
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

    local rc=0
    tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . |
        DOCKER_CONFIG=$tmp/cli ecr_build_docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/sh"]' \
            --change "LABEL $label=$key" \
            - "$name" >/dev/null || rc=$?
    rm -rf "$tmp"
    if ((rc != 0)); then
        _ecr_build_err "docker import of $name failed"
        return 1
    fi
}

# arm64 under emulation, for multi-platform builds: QEMU's aarch64 handler registered with the
# fix-binary flag (so it works inside builds and containers), and Debian's arm64 busybox-static,
# downloaded for a private apt config with arm64 added and unpacked, nothing installed; also the
# s390x one, which no handler runs (a platform the engine cannot run). Prints the arm64 busybox.
ecr_build_enable_arm64() {
    ecr_build_pkg_installed qemu-user-static || ecr_build_apt_install qemu-user-static || return 1
    local binfmt=/proc/sys/fs/binfmt_misc
    if [[ ! -e $binfmt/register ]]; then
        mount -t binfmt_misc binfmt_misc "$binfmt" || {
            _ecr_build_err "cannot mount binfmt_misc (root is needed)"
            return 1
        }
    fi
    if [[ ! -e $binfmt/qemu-aarch64 ]]; then
        tr -d '\n' </usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register" || {
            _ecr_build_err "cannot register QEMU's aarch64 handler"
            return 1
        }
    fi
    local dir busybox
    dir=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ecr-build/busybox-arm64
    busybox=$dir/root/bin/busybox
    if [[ ! -x $busybox || ! -x $dir/s390x/bin/busybox ]]; then
        local apt=$dir/apt
        rm -rf "${dir:?}"
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dir/debs"
        echo "deb http://deb.debian.org/debian bookworm main" >"$apt/sources.list"
        local -a opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root
            -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Architectures::=s390x)
        if ! apt-get -q "${opts[@]}" update >"$dir/apt.log" 2>&1 ||
            ! (cd "$dir/debs" && apt-get -q "${opts[@]}" download busybox-static:arm64 busybox-static:s390x) >>"$dir/apt.log" 2>&1; then
            _ecr_build_err "could not fetch Debian's arm64 busybox-static"
            tail -n 20 "$dir/apt.log" >&2
            return 1
        fi
        dpkg-deb -x "$dir"/debs/*_arm64.deb "$dir/root" || return 1
        dpkg-deb -x "$dir"/debs/*_s390x.deb "$dir/s390x" || return 1
        rm -rf "$apt" "$dir/debs"
    fi
    echo "$busybox"
}

# A Debian bookworm image (debootstrap --variant=minbase, imported) in the daemon at $DOCKER_HOST,
# standing in for the custom CodeBuild image's base, which cannot be pulled here. The root file
# system is cached as a tarball, so only the first run pays for debootstrap.
ecr_build_bookworm_image() {
    local name=${1:?usage: ecr_build_bookworm_image NAME}
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ecrb-bookworm.XXXXXX")
    if DOCKER_CONFIG=$tmp/cli ecr_build_docker image inspect "$name" >/dev/null 2>&1; then
        rm -rf "$tmp"
        return 0
    fi
    local cache tarball
    cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ecr-build
    tarball=$cache/bookworm-minbase.tar
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null || ecr_build_apt_install debootstrap || return 1
        _ecr_build_log "debootstrap of bookworm (minbase) into $tmp/root, once: cached as $tarball"
        mkdir -p "$cache"
        if ! /usr/sbin/debootstrap --variant=minbase bookworm "$tmp/root" http://deb.debian.org/debian \
            >"$tmp/debootstrap.log" 2>&1; then
            _ecr_build_err "debootstrap failed"
            tail -n 20 "$tmp/debootstrap.log" >&2
            rm -rf --one-file-system "$tmp"
            return 1
        fi
        tar -C "$tmp/root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    fi
    _ecr_build_log "importing $tarball as $name"
    DOCKER_CONFIG=$tmp/cli ecr_build_docker import - "$name" <"$tarball" >/dev/null || {
        rm -rf --one-file-system "$tmp"
        return 1
    }
    rm -rf --one-file-system "$tmp"
}

# _ecr_build_stop_pid NAME PID NEEDLE TIMEOUT: TERM, wait, then KILL. NEEDLE guards against a
# recycled PID: the process is only signalled if its command line contains NEEDLE.
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
# killed dockerd, or a registry a test restarted with $ECR_BUILD_TEST_REGISTRY_CONFIG.
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
    *)
        echo "usage: $0 start [STATE_DIR] | stop STATE_DIR   (or source this file)" >&2
        exit 2
        ;;
    esac
fi
