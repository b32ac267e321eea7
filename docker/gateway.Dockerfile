# syntax=docker/dockerfile:1
# The Thorax gateway (`thorax serve`): FastAPI + onnxruntime + the minio SDK, no torch.
#   docker build -f docker/gateway.Dockerfile -t thorax/gateway:0.1.0 .
# The model store is not baked in: the Helm chart mounts it (a PVC, or a copy from S3) at /models.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/thorax
WORKDIR /src
# Only what the package needs (pyproject's package list names training/ too; it is not imported here).
COPY pyproject.toml README.md ./
COPY thorax thorax
COPY service service
COPY training training
COPY clients clients
RUN /opt/thorax/bin/pip install ".[service]"

FROM python:3.11-slim
ENV PATH=/opt/thorax/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    THORAX_MODEL_STORE=/models
RUN groupadd --gid 10001 thorax \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin thorax
COPY --from=build /opt/thorax /opt/thorax
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK NONE
CMD ["thorax", "serve", "--host", "0.0.0.0", "--port", "8000"]
