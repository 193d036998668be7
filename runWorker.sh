#!/usr/bin/env bash
# Starts a cloudq worker. Arguments are passed on to `cloudq worker` (see --help), e.g.
#   ./runWorker.sh --master 10.0.0.5:18861 --tls-dir certs --name gpu-1 --max-tasks 4
# The first run makes .venv and installs what cloudq needs.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh ""  # no extras; without an argument it would see ours
exec python -m cloudq worker "$@"
