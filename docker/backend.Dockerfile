# syntax=docker/dockerfile:1
# The attention service (backend/) with CPU-only PyTorch. Build from the repository root:
#   docker build -f docker/backend.Dockerfile -t dino-backend .
ARG PYTHON_VERSION=3.11

# -- build stage: a virtual environment with every dependency (wheels only) ------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"
COPY docker/requirements-backend.txt /tmp/requirements-backend.txt
RUN pip install -r /tmp/requirements-backend.txt

# -- final stage: the slim base, the venv and the sources; no compilers, no pip cache --------
FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DINO_HOST=0.0.0.0 \
    DINO_PORT=8000 \
    DINO_CHECKPOINT_DIR=/app/checkpoints \
    DINO_CACHE_DIR=/cache \
    DINO_DEVICE=cpu
RUN useradd --create-home --uid 10001 --user-group dino \
    && mkdir -p /app/checkpoints /cache \
    && chown dino:dino /cache
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY trainer/ trainer/
COPY backend/ backend/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["python", "-m", "backend"]
