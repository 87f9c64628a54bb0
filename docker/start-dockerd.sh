#!/bin/sh
# Starts dockerd in the background unless one already answers, then waits until it does
# (the `until docker info; do sleep 1; done` of today's buildspecs, with a limit and a clear error).
#   DOCKERD_FLAGS          extra dockerd flags, e.g. "--storage-driver=vfs --iptables=false"
#   DOCKERD_START_TIMEOUT  seconds to wait (default 30)
#   DOCKERD_LOG            where dockerd logs (default /var/log/dockerd.log)
set -eu

timeout=${DOCKERD_START_TIMEOUT:-30}
log=${DOCKERD_LOG:-/var/log/dockerd.log}

if docker info >/dev/null 2>&1; then
    exit 0
fi

# DOCKERD_FLAGS is split into words on purpose: it holds several flags.
# shellcheck disable=SC2086
nohup dockerd --host=unix:///var/run/docker.sock ${DOCKERD_FLAGS:-} >"$log" 2>&1 &

waited=0
until docker info >/dev/null 2>&1; do
    if [ "$waited" -ge "$timeout" ]; then
        echo "start-dockerd: dockerd did not answer within ${timeout} s; is the CodeBuild project in privileged mode (privilegedMode: true)? Last lines of $log:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
