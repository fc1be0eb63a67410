#!/usr/bin/env bash
# Regenerates the hash-checked dependency locks under requirements/ from
# pyproject.toml (`make lock`). pip-compile (pip-tools) resolves against PyPI
# only: the machine's pip configuration (extra indexes, local wheel folders) is
# ignored so the lock names the same files everywhere.
#   requirements/dev.lock.txt     guest + server + guest-rest + dev tools (what CI installs)
#   requirements/guest.lock.txt   the guest set alone (the confidential guest's TCB)
#   requirements/server.lock.txt  guest + the KBS's dependencies
# guest.lock.txt and server.lock.txt are resolved under dev.lock.txt as a constraint, so one
# package has one version in every set.
set -euo pipefail
cd "$(dirname "$0")/.."
compile=(env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT
         PIP_CONFIG_FILE=/dev/null .venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe
         --strip-extras --no-emit-index-url --no-emit-find-links --resolver=backtracking
         "$@")
"${compile[@]}" --extra server --extra guest-rest --extra dev -o requirements/dev.lock.txt pyproject.toml
"${compile[@]}" -c requirements/dev.lock.txt -o requirements/guest.lock.txt pyproject.toml
"${compile[@]}" -c requirements/dev.lock.txt --extra server -o requirements/server.lock.txt pyproject.toml
echo "lock: requirements/{dev,guest,server}.lock.txt"
