#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the whole test suite.
#   ./runTests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
scripts/system-packages.sh
scripts/start-services.sh
. scripts/venv.sh test
ruff check cloudq tests bench
python -m pytest "$@"
