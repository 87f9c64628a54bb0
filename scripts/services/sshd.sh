# shellcheck shell=bash
# A private sshd whose sessions reach the test engine: a remote build host.
# Sourced by scripts/services.sh; see its header.

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
