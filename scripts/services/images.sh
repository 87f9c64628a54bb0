# shellcheck shell=bash
# Images made without pulling: the busybox base, arm64 emulation, a Debian bookworm base.
# Sourced by scripts/services.sh; see its header.

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
