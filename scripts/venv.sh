# Sourced by runMaster.sh, runWorker.sh and runTests.sh: make .venv on first use and keep it
# in step with setup.cfg. Usage: . scripts/venv.sh [EXTRAS]   (EXTRAS e.g. "test")
set -e
CLOUDQ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLOUDQ_VENV=${CLOUDQ_VENV:-$CLOUDQ_ROOT/.venv}
_extras=${1:-}
_stamp=$CLOUDQ_VENV/.cloudq-installed${_extras:+-$_extras}
if [ ! -x "$CLOUDQ_VENV/bin/python" ]; then
    echo "cloudq: creating virtualenv in $CLOUDQ_VENV" >&2
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian's system Python ships venv separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            echo "cloudq: python3 cannot make virtualenvs; install python3-venv" >&2
            exit 1
        fi
    fi
    python3 -m venv "$CLOUDQ_VENV"
fi
# Reinstall only when setup.cfg changed since the last install.
if [ ! -f "$_stamp" ] || [ "$CLOUDQ_ROOT/setup.cfg" -nt "$_stamp" ]; then
    echo "cloudq: installing dependencies${_extras:+ ($_extras)}" >&2
    "$CLOUDQ_VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$CLOUDQ_VENV/bin/python" -m pip install -q -e "$CLOUDQ_ROOT${_extras:+[$_extras]}" >&2
    touch "$_stamp"
fi
export PATH=$CLOUDQ_VENV/bin:$PATH
set +e
