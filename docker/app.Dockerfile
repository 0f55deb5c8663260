# The web app (app/): Gradio, talking to the service at BACKEND_URL. No torch in this image.
#   docker build -f docker/app.Dockerfile -t dino-app .
# Build args (docs/DOCKER.md): BASE_IMAGE, WHEELHOUSE, CA_DIR (build stage only).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=docker/wheelhouse CA_DIR=docker/certs
COPY ${CA_DIR}/ /tmp/certs/
COPY ${WHEELHOUSE}/ /tmp/wheelhouse/
COPY docker/pip_install.sh docker/requirements-app.txt /tmp/
RUN sh /tmp/pip_install.sh /tmp/requirements-app.txt

# Gradio, matplotlib and the example photos write only under /tmp (a tmpfs with a read-only root).
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/dino \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    GRADIO_TEMP_DIR=/tmp/gradio \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    DINO_APP_EXAMPLES_DIR=/tmp/dino-app-examples \
    BACKEND_URL=http://backend:8000
RUN useradd --create-home --uid 10001 --user-group dino
# Metadata and sources before the large venv: with a copying storage driver (vfs) every step
# copies the whole filesystem, so steps are cheapest while it is small.
WORKDIR /app
USER 10001:10001
EXPOSE 7860
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4).status != 200)"]
CMD ["python", "-m", "app"]
COPY app/ /app/app/
# the environment last: one large step, after the small ones
COPY --from=build /opt/venv /opt/venv
