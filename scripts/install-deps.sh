#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine (as root):
# Debian packages for the real peers the tests use, and the virtual
# environment at .venv with the project and its development tools.
# Idempotent: a second run installs nothing new.
#   scripts/install-deps.sh          apt packages + .venv
#   scripts/install-deps.sh --vm     also what the QEMU guest test needs
# The guest set alone (what a confidential guest image carries), in any venv:
#   pip install --require-hashes -r requirements/guest.lock.txt && pip install --no-deps coco_py-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(docker-registry skopeo umoci gnupg gpgv openssl cryptsetup-bin e2fsprogs redis-server postgresql haproxy
          softhsm2 nebula runc swtpm swtpm-tools tpm2-tools zstd tar python3 python3-venv python3-dev gcc iproute2
          golang-go golang-github-containerd-ttrpc-dev golang-google-protobuf-dev)
if [[ "${1:-}" == "--vm" ]]; then
  apt_pkgs+=(qemu-system-x86 qemu-utils debootstrap linux-image-cloud-amd64 busybox-static cpio kmod)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python packages come only from the hash-checked lock (requirements/dev.lock.txt:
# guest + server + dev tools; `make lock` regenerates it from pyproject.toml);
# the project itself is then installed without resolving anything (--no-deps).
stamp=.venv/.installed
lock=requirements/dev.lock.txt
if [[ ! -x .venv/bin/python || pyproject.toml -nt "$stamp" || "$lock" -nt "$stamp" ]]; then
  py=python3
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  .venv/bin/pip install -q --require-hashes --only-binary :all: -r "$lock"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
