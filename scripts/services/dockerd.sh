# shellcheck shell=bash
# The private dockerd (Docker 20.10, or 28 with its own containerd), its TLS certificates, and the
# docker client of its own version.
# Sourced by scripts/services.sh; see its header.

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
    if ecr_build_engine_is_28; then
        local root
        root=$(ecr_build_engine28_dir)/root
        [[ -x $root/usr/sbin/dockerd ]] || _ecr_build_install_engine28 || return 1
        _ecr_build_start_containerd28 "$sd" "$root" || return 1
        dockerd=$root/usr/sbin/dockerd
        engine_path="$sd/bin:$root/usr/bin:$root/usr/sbin:$PATH"
        engine_flags=(--containerd="$sd/containerd/c.sock")
        if [[ $ECR_BUILD_ENGINE == 28-containerd ]]; then
            printf '{"features": {"containerd-snapshotter": true}}\n' >"$sd/daemon.json"
            engine_flags+=(--config-file="$sd/daemon.json")
        fi
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

ecr_build_engine_cli() {
    if ecr_build_engine_is_28; then
        echo "$(ecr_build_engine28_dir)/root/usr/bin/docker"
    else
        echo /usr/bin/docker
    fi
}

_ecr_build_engine_buildx() {
    ecr_build_engine_is_28 || return 0
    echo "$(ecr_build_engine28_dir)/root/usr/libexec/docker/cli-plugins/docker-buildx"
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
