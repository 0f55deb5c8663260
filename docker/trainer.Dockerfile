# syntax=docker/dockerfile:1
# DINO pretraining (trainer/) on NVIDIA GPUs: CUDA runtime base, CUDA PyTorch wheels.
#   docker build -f docker/trainer.Dockerfile -t dino-trainer .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# -- build stage: python + venv on the CUDA base ---------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url ${TORCH_INDEX_URL} "torch>=2.4" "torchvision>=0.19"
COPY docker/requirements-trainer.txt /tmp/requirements-trainer.txt
RUN pip install -r /tmp/requirements-trainer.txt

# -- final stage: the same base with only the python runtime, the venv and the sources --------
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group dino \
    && mkdir -p /data /runs \
    && chown dino:dino /runs
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY trainer/ trainer/
USER 10001:10001
ENTRYPOINT ["python", "trainer/run.py"]
CMD ["--help"]
