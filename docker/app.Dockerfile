# syntax=docker/dockerfile:1
# The web app (app/): Gradio, talking to the service at BACKEND_URL. No torch in this image.
#   docker build -f docker/app.Dockerfile -t dino-app .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements-app.txt /tmp/requirements-app.txt
RUN pip install -r /tmp/requirements-app.txt

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    BACKEND_URL=http://backend:8000
RUN useradd --create-home --uid 10001 --user-group dino
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY app/ app/
USER 10001:10001
EXPOSE 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4).status != 200)"]
CMD ["python", "-m", "app"]
