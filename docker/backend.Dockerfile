# The attention service (backend/) with CPU-only PyTorch. Build from the repository root:
#   docker build -f docker/backend.Dockerfile -t dino-backend .
# Build args (docs/DOCKER.md): BASE_IMAGE (any Debian-like image with python3, venv and pip),
# TORCH_INDEX_URL, WHEELHOUSE (offline builds), CA_DIR (a proxy's CA, build stage only).
# The image holds the service and trainer/model only: no training code, no CUDA, no weights.
ARG BASE_IMAGE=python:3.11-slim

# -- build stage: a virtual environment with every dependency (wheels only) ------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu WHEELHOUSE=docker/wheelhouse CA_DIR=docker/certs
COPY ${CA_DIR}/ /tmp/certs/
COPY ${WHEELHOUSE}/ /tmp/wheelhouse/
COPY docker/pip_install.sh docker/requirements-backend.txt /tmp/
RUN sh /tmp/pip_install.sh /tmp/requirements-backend.txt torch torchvision

# -- final stage: the base, the venv and the sources; no compilers, no pip cache, no CA ------
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/dino \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    DINO_HOST=0.0.0.0 \
    DINO_PORT=8000 \
    DINO_CHECKPOINT_DIR=/app/checkpoints \
    DINO_CACHE_DIR=/cache \
    DINO_DEVICE=cpu
RUN useradd --create-home --uid 10001 --user-group dino \
    && mkdir -p /app/checkpoints /cache \
    && chown dino:dino /cache
# Metadata and sources before the large venv: with a copying storage driver (vfs) every step
# copies the whole filesystem, so steps are cheapest while it is small.
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "-m", "backend"]
COPY trainer/__init__.py /app/trainer/__init__.py
COPY trainer/model/ /app/trainer/model/
COPY backend/ /app/backend/
# the environment last: one large step, after the small ones
COPY --from=build /opt/venv /opt/venv
