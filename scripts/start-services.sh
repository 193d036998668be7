#!/usr/bin/env bash
# Starts a Docker engine when none answers, and makes the local test image from busybox-static
# (nothing can be pulled here). Idempotent.
set -euo pipefail
IMAGE=${CLOUDQ_TEST_IMAGE:-cloudq-busybox:latest}
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "cloudq: no Docker engine answers and we are not root to start one" >&2
        exit 1
    fi
    echo "cloudq: starting dockerd" >&2
    setsid dockerd >/tmp/cloudq-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { echo "cloudq: dockerd did not start; see /tmp/cloudq-dockerd.log" >&2; exit 1; }
fi
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    bb=$(command -v busybox)
    tmp=$(mktemp -d)
    mkdir -p "$tmp/bin"
    cp "$bb" "$tmp/bin/busybox"
    for applet in $("$tmp/bin/busybox" --list); do
        [ -e "$tmp/bin/$applet" ] || ln -s busybox "$tmp/bin/$applet"
    done
    tar -C "$tmp" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    rm -rf "$tmp"
    echo "cloudq: made image $IMAGE from busybox-static" >&2
fi
