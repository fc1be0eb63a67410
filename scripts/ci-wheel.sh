#!/usr/bin/env bash
# Tests the built artifacts, not the source tree (run by .ci/run after `make test`;
# alone: `make wheel-test`). Builds the wheel and sdist into dist/, then:
#   1. a fresh venv with the guest lock alone (requirements/guest.lock.txt) and the
#      wheel: every guest console script answers --help, and the server's
#      libraries are not installed;
#   2. a fresh venv with the full lock (requirements/dev.lock.txt) and the wheel:
#      every console script answers --help, and the demo flow (scripts/demo.py)
#      runs against the installed commands, so package data the wheel lacks fails.
# Both venvs install with --require-hashes and the project with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[[ -x .venv/bin/python ]] || scripts/install-deps.sh

rm -rf dist
.venv/bin/python -m build --no-isolation --sdist --wheel -o dist . >/dev/null
wheel=$(ls dist/coco_py-*.whl)
sdist=$(ls dist/coco_py-*.tar.gz)
echo "ci-wheel: built $(basename "$wheel") and $(basename "$sdist")"

work=$(mktemp -d /tmp/coco-ci-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
mapfile -t scripts < <(.venv/bin/python - <<'PY'
import tomllib
for name in tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"]:
    print(name)
PY
)
# the KBS side (server extra): scripts whose module is in the kbs package
mapfile -t server_scripts < <(.venv/bin/python - <<'PY'
import tomllib
for name, target in tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"].items():
    if target.split(":")[0].split(".")[0] == "kbs":
        print(name)
PY
)
rest_scripts=(api-server-rest) # the guest-rest extra (aiohttp)

fresh() {  # fresh VENV LOCK
  python3 -m venv "$1"
  "$1/bin/pip" install -q --require-hashes --only-binary :all: -r "$2"
  "$1/bin/pip" install -q --no-deps "$root/$wheel"
}

help_ok() {  # help_ok VENV SCRIPT
  if ! (cd "$work" && "$1/bin/$2" --help >"$work/help.out" 2>&1); then
    echo "ci-wheel: $2 --help failed in $(basename "$1"):" >&2
    tail -20 "$work/help.out" >&2
    return 1
  fi
}

# 1. guest set alone
fresh "$work/guest" requirements/guest.lock.txt
for mod in aiohttp regopy redis; do
  if "$work/guest/bin/python" -c "import $mod" 2>/dev/null; then
    echo "ci-wheel: the guest lock installed $mod (a server dependency)" >&2
    exit 1
  fi
done
n=0
for s in "${scripts[@]}"; do
  [[ " ${server_scripts[*]} ${rest_scripts[*]} " == *" $s "* ]] && continue
  help_ok "$work/guest" "$s"
  n=$((n + 1))
done
echo "ci-wheel: guest venv: $n console scripts answer --help without the server's libraries"

# 2. everything, and the demo flow against the installed wheel
fresh "$work/full" requirements/dev.lock.txt
for s in "${scripts[@]}"; do
  help_ok "$work/full" "$s"
done
echo "ci-wheel: full venv: ${#scripts[@]} console scripts answer --help"
site=$(cd "$work" && "$work/full/bin/python" -c "import attestation, kbs, cdh; print(kbs.__file__)")
[[ "$site" == "$work/full/"* ]] || { echo "ci-wheel: kbs imported from $site, not the wheel" >&2; exit 1; }
"$work/full/bin/python" scripts/demo.py
echo "ci-wheel: OK"
