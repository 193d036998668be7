#!/usr/bin/env bash
# Starts a cloudq master. With no arguments: on loopback, with one local worker and the
# interactive master> shell. Arguments are passed on to `cloudq master` (see --help).
# The first run makes .venv and installs what cloudq needs.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh ""  # no extras; without an argument it would see ours
if [ $# -eq 0 ]; then
    set -- --local-workers 1
fi
exec python -m cloudq master "$@"
