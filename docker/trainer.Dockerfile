# DINO pretraining (trainer/). By default for NVIDIA GPUs: CUDA runtime base, CUDA PyTorch wheels.
#   docker build -f docker/trainer.Dockerfile -t dino-trainer .
# A CPU trainer: --build-arg CUDA_IMAGE=python:3.11-slim
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Build args (docs/DOCKER.md): CUDA_IMAGE (Debian/Ubuntu-like; python3 is installed when missing),
# TORCH_INDEX_URL, WHEELHOUSE (offline builds), CA_DIR (a proxy's CA, build stage only).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# -- build stage: python + venv on the same base ----------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 WHEELHOUSE=docker/wheelhouse CA_DIR=docker/certs
COPY ${CA_DIR}/ /tmp/certs/
COPY ${WHEELHOUSE}/ /tmp/wheelhouse/
COPY docker/pip_install.sh docker/requirements-trainer.txt /tmp/
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && sh /tmp/pip_install.sh /tmp/requirements-trainer.txt torch torchvision

# -- final stage: the same base with only the python runtime, the venv and the sources --------
FROM ${CUDA_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/dino \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --create-home --uid 10001 --user-group dino \
    && mkdir -p /data /runs \
    && chown dino:dino /runs
# Metadata and sources before the large venv: with a copying storage driver (vfs) every step
# copies the whole filesystem, so steps are cheapest while it is small.
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "trainer/run.py"]
CMD ["--help"]
COPY trainer/ /app/trainer/
# the environment last: one large step, after the small ones
COPY --from=build /opt/venv /opt/venv
