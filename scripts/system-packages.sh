#!/usr/bin/env bash
# Installs the real tools the test suite drives (ffmpeg, Docker engine, Prometheus, tmux, less,
# busybox-static for the local container image, Chromium for the status page, PostgreSQL
# for standby masters) when run as root and any is missing.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v dockerd >/dev/null || need+=(docker.io)
# prometheus brings promtool, which checks the metrics endpoint's output
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v tmux >/dev/null || need+=(tmux)
command -v less >/dev/null || need+=(less)  # the shell's pager, driven by the tmux tests
command -v prlimit >/dev/null || need+=(util-linux)  # descriptor-limit attack tests
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)  # partitions between network namespaces
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)  # the status page, in a real browser
command -v chromedriver >/dev/null || need+=(chromium-driver)
# the shared store of standby masters; its tests run initdb and a server of their own
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "cloudq: missing system packages (${need[*]}); install them as root" >&2
    exit 1
fi
echo "cloudq: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
