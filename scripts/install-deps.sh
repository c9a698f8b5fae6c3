#!/usr/bin/env bash
# Installs the Debian packages dfm needs. Idempotent: packages already present are skipped, and
# nothing is done when all are there.
#   install-deps.sh          what building and running dfm needs (make demo)
#   install-deps.sh --test   that plus what the tests and benchmarks need (make test, make bench)
set -euo pipefail

PKGS=(
  build-essential make gcc
  libopenblas-openmp-dev libopenblas0-openmp   # BLAS built for OpenMP (see docs/ARCHITECTURE.md)
  libdnnl-dev                                  # oneDNN: sgemm of the linear layers
  libomp-dev                                   # OpenMP runtime for clang builds
  libyaml-dev libjansson-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev
  libzip-dev                                   # torch.save zip archives (.pth, .meta)
  libgif-dev                                   # animated GIFs of generated videos (giflib)
  pkg-config libcairo2-dev fonts-dejavu-core    # sample grids and loss curves (cairo; a font for their labels)
  dataset-fashion-mnist                        # the default training data
  libopenmpi-dev openmpi-bin                   # many processes: mpirun -np N dfm pretrain ...
)
if [ "${1:-}" = "--test" ]; then
  PKGS+=(
    clang                                      # the test suite also builds with clang
    libclang-rt-14-dev                         # clang's sanitizer and libFuzzer runtimes (tests/fuzz/)
    python3-torch python3-numpy                # PyTorch references in tests and benchmarks (/usr/bin/python3)
  )
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to apt-get install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
