#!/bin/sh
# Build stages only: create the virtual environment /opt/venv and install an image's packages.
#   sh docker/pip_install.sh REQUIREMENTS_FILE [PACKAGE...]
# PACKAGEs (torch, torchvision) come from TORCH_INDEX_URL; the requirements from pip's index
# (PIP_INDEX_URL, HTTPS_PROXY... as build args). When /tmp/wheelhouse holds wheels
# (docker/wheelhouse/, filled by docker/fill_wheelhouse.sh) everything comes from there and
# nothing from the network. A CA bundle in /tmp/certs (docker/certs/*.crt or *.pem) is trusted
# for the downloads; it is copied into build stages only, never into an image's final stage.
set -eu
requirements=$1
shift
python3 -m venv /opt/venv
pip=/opt/venv/bin/pip
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
for ca in /tmp/certs/*.crt /tmp/certs/*.pem; do
    if [ -s "$ca" ]; then
        export PIP_CERT="$ca"
        echo "pip trusts the CA bundle $ca"
    fi
done
if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then
    echo "installing offline from the wheelhouse ($(ls /tmp/wheelhouse/*.whl | wc -l) wheels)"
    "$pip" install --no-index --find-links /tmp/wheelhouse "$@" -r "$requirements"
else
    if [ "$#" -gt 0 ]; then
        "$pip" install --index-url "${TORCH_INDEX_URL:?TORCH_INDEX_URL is empty}" "$@"
    fi
    "$pip" install -r "$requirements"
fi
# An image that builds but cannot import torchvision (a CUDA build of it next to CPU torch: its
# operators do not load) would only fail at start-up: fail the build here instead.
if [ "$#" -gt 0 ]; then
    /opt/venv/bin/python -c "import torch, torchvision" || {
        echo "torch $(/opt/venv/bin/pip show torch | sed -n 's/^Version: //p') and torchvision" \
             "$(/opt/venv/bin/pip show torchvision | sed -n 's/^Version: //p') do not work" \
             "together: take both from the same index (CPU or the same CUDA), see docs/DOCKER.md" >&2
        exit 1
    }
fi
/opt/venv/bin/pip check
