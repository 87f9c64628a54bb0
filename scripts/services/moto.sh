# shellcheck shell=bash
# moto's server for ECR and SSM.
# Sourced by scripts/services.sh; see its header.

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
