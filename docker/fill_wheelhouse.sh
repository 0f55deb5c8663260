#!/usr/bin/env bash
# Download every wheel the images install into docker/wheelhouse/, for builds without internet
# (or behind a proxy the build cannot use). The Dockerfiles then install from it and nothing else.
#   docker/fill_wheelhouse.sh                     # CPU torch from download.pytorch.org
#   TORCH_INDEX_URL= TORCH_PACKAGES="torch==2.13.0+cpu torchvision==0.28.0+cpu" \
#       docker/fill_wheelhouse.sh                 # torch from pip's configured indexes/find-links
# Environment:
#   TORCH_INDEX_URL  index of the torch wheels (default: the CPU index; empty: pip's configuration)
#   TORCH_PACKAGES   torch requirements (default "torch torchvision")
#   PYTHON_VERSION   the images' Python (default 3.11, python:3.11-slim and Debian bookworm)
#   WHEELHOUSE       destination (default docker/wheelhouse)
#   PIP              pip command (default "python3 -m pip")
# Every image of a build uses the same wheelhouse: fill it with CPU torch for the service and
# the CPU trainer, or with CUDA torch (TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128)
# in a second folder for the GPU trainer (build arg WHEELHOUSE=docker/wheelhouse-cuda).
#   docker/fill_wheelhouse.sh --check            # only check the wheelhouse (exit 1 on a mismatch)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
TORCH_PACKAGES=${TORCH_PACKAGES:-torch torchvision}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
WHEELHOUSE=${WHEELHOUSE:-$here/wheelhouse}
PIP=${PIP:-python3 -m pip}
mkdir -p "$WHEELHOUSE"

# A CPU torch needs a CPU torchvision: the CUDA build of torchvision (it bundles libcudart) cannot
# load its operators next to CPU torch, and then `import torchvision` (and timm) fails.
check_wheelhouse() {
    local torch_wheel vision_wheel
    torch_wheel=$(find "$WHEELHOUSE" -maxdepth 1 -name 'torch-*.whl' | sort | tail -n 1)
    vision_wheel=$(find "$WHEELHOUSE" -maxdepth 1 -name 'torchvision-*.whl' | sort | tail -n 1)
    [ -n "$torch_wheel" ] && [ -n "$vision_wheel" ] || return 0
    if [[ $(basename "$torch_wheel") == *+cpu* ]] \
        && python3 -m zipfile -l "$vision_wheel" | grep -q 'libcudart'; then
        echo "error: $(basename "$vision_wheel") is a CUDA build but $(basename "$torch_wheel")" \
             "is a CPU build; they do not work together. Put a CPU torchvision" \
             "(https://download.pytorch.org/whl/cpu) in $WHEELHOUSE." >&2
        return 1
    fi
}
if [ "${1:-}" = "--check" ]; then
    check_wheelhouse
    exit
fi

# Wheels for Linux x86_64 with glibc 2.36 (bookworm) or newer, for CPython $PYTHON_VERSION.
target=(--only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp)
for minor in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${minor}_x86_64"); done
target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64)
target+=(--platform manylinux1_x86_64 --platform linux_x86_64)

torch_index=()
if [ -n "$TORCH_INDEX_URL" ]; then torch_index=(--index-url "$TORCH_INDEX_URL"); fi
# shellcheck disable=SC2086  # TORCH_PACKAGES is a list of requirements
$PIP download --dest "$WHEELHOUSE" "${target[@]}" "${torch_index[@]}" $TORCH_PACKAGES

# Pin the torch wheels just downloaded, so that resolving timm's dependencies cannot fetch another.
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
for wheel in "$WHEELHOUSE"/torch-*.whl "$WHEELHOUSE"/torchvision-*.whl; do
    [ -e "$wheel" ] || continue
    name_version=$(basename "$wheel" | cut -d- -f1,2)
    echo "${name_version%%-*}==${name_version#*-}" | sed 's/%2B/+/' >> "$pins"
done
for image in backend app trainer; do
    $PIP download --dest "$WHEELHOUSE" "${target[@]}" --find-links "$WHEELHOUSE" \
        --constraint "$pins" -r "$here/requirements-$image.txt"
done

cuda=$(find "$WHEELHOUSE" -name 'nvidia_*.whl' | wc -l)
count=$(find "$WHEELHOUSE" -name '*.whl' | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
ls -l "$WHEELHOUSE"/torch-*.whl "$WHEELHOUSE"/torchvision-*.whl
check_wheelhouse
if [ "$cuda" -gt 0 ]; then
    echo "note: $cuda nvidia_* (CUDA) wheels: images built from this wheelhouse carry CUDA" \
         "libraries"
fi
