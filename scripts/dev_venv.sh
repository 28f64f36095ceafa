# Sourced by the development scripts: dev_venv VENV BUILD_DIR [pip -C settings...]
# creates VENV if needed, installs the test dependencies (same pins as the
# test extra; the wheels come from the local index / wheel cache) and builds
# the package into it, editable, from BUILD_DIR with the given settings.
dev_venv() {
  local venv=$1 build_dir=$2
  shift 2
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "numpy>=1.23" "torch==2.13.0" "pytest>=7" "hypothesis>=6" \
    "scipy>=1.9" "tqdm>=4" "expecttest>=0.2" "threadpoolctl>=3.5" "scikit-build-core>=0.11" "pybind11>=2.13.6" cmake ninja
  "$venv/bin/pip" install -q --no-build-isolation -e . "$@" -Cbuild-dir="$build_dir"
}
