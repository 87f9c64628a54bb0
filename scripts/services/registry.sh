# shellcheck shell=bash
# The registry: Debian's docker-registry with htpasswd basic auth for moto's ECR credentials.
# Sourced by scripts/services.sh; see its header.

# _ecr_build_start_registry STATE_DIR [PORT]: on PORT (a restart keeps its port), else on a free one.
_ecr_build_start_registry() {
    local sd=$1 fixed_port=${2:-}
    mkdir -p "$sd/run"
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
    local attempts=3
    [[ -n $fixed_port ]] && attempts=1
    for ((attempt = 0; attempt < attempts; attempt++)); do
        port=${fixed_port:-$(_ecr_build_free_port)} || return 1
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
