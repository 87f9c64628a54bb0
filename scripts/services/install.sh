# shellcheck shell=bash
# What the services need, installed where missing: Debian packages, Docker 28 from sid (unpacked
# in a private folder), moto in a venv.
# Sourced by scripts/services.sh; see its header.

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
    if ((with_moto)) || ecr_build_engine_is_28; then
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
