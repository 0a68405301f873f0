# Sourced by every step of .ci/steps: the settings they share, a timer that prints
# the step's time when it ends, and helpers to find interpreters and tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_INPUT=1
export DEBIAN_FRONTEND=noninteractive

STEP=$(basename "$0")
step_started=$SECONDS
printf '\n=== %s\n' "$STEP"
step_done() {
    local rc=$?
    local verdict=passed
    [ "$rc" = 0 ] || verdict="FAILED (exit $rc)"
    printf '=== %s: %s in %ds\n' "$STEP" "$verdict" $((SECONDS - step_started))
}
trap step_done EXIT

# The system packages the steps need, installed by 00-setup (apt-get update once);
# iproute2's ip makes the network namespaces of tests/test_dask.py's two test hosts.
APT_PACKAGES=(gcc make python3-venv python3-dev clang libclang-rt-14-dev clang-format iproute2)

# Fail with a useful line when a tool 00-setup installs is missing.
need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "$tool is missing: run bash .ci/steps/00-setup first (as root it installs it)" >&2
            exit 1
        fi
    done
}

# CI's virtual environment (.venv-ci, made by 00-setup: kmemcache with its dev, docs
# and dask extras, and pyarrow for the Arrow tests), activated; made here when a step
# runs alone before 00-setup. The dask extra and pyarrow let tests/test_dask.py and
# the Arrow tests run in 40-pytest (they skip where either is absent) and mypy check
# kmemcache.dask against distributed's types.
use_ci_venv() {
    if [ ! -x .venv-ci/bin/python ]; then
        python3 -m venv .venv-ci
        .venv-ci/bin/python -m pip install -q --upgrade pip
        KMEMCACHE_WERROR=1 .venv-ci/bin/python -m pip install -q '.[dev,docs,dask]' 'pyarrow>=12'
    fi
    # shellcheck disable=SC1091
    . .venv-ci/bin/activate
}

# The interpreter of CPython $1 ("3.12"), from pyenv or PATH; nothing if absent.
find_cpython() {
    local want=$1 py candidates=()
    if command -v pyenv >/dev/null 2>&1; then
        candidates+=("$(pyenv root)/versions/$want".*/bin/python"$want")
    fi
    candidates+=("$(command -v "python$want" || true)")
    for py in "${candidates[@]}"; do
        if [ -x "$py" ] && [ "$("$py" -c 'import sys
print(sys.implementation.name, "%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "cpython $want" ]; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

# A scratch folder for this step, removed when it ends.
scratch() {
    work=$(mktemp -d)
    trap 'rc=$?; rm -rf "$work"; (exit $rc); step_done' EXIT
}
