#!/usr/bin/env bash
# Build the extension with the one-lane scalar baseline (what CPUs without SSE2,
# i.e. builds other than x86-64, run; on x86-64 the baseline is SSE2) into its own
# virtual environment (.venv-scalar, build dir build/scalar) and run every test
# that forces the baseline path on it.
#
#   scripts/scalar_baseline.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-scalar
. scripts/dev_venv.sh
# (Only the baseline kernels: the tests run below force that path.)
dev_venv "$VENV" build/scalar -Ccmake.define.FUSEDLOSS_SCALAR_BASELINE=ON -Ccmake.define.FUSEDLOSS_MAX_ISA=baseline
grep -q "^FUSEDLOSS_SCALAR_BASELINE:BOOL=ON" build/scalar/CMakeCache.txt || {
  echo "scalar_baseline: build/scalar was not built with FUSEDLOSS_SCALAR_BASELINE" >&2
  exit 2
}
exec "$VENV/bin/python" -m pytest -m "not slow" -k baseline -p no:cacheprovider -q "$@"
