# syntax=docker/dockerfile:1
# TorchServe for Thorax's generator archives (<name>.mar from `thorax export`), CPU torch.
#   docker build -f docker/torchserve.Dockerfile -t thorax/torchserve:0.1.0 .
# The .mar carries the handler, the network code and safetensors weights; the Helm chart mounts the
# verified model store at /models and starts `torchserve --models NAME=NAME.mar`.

# bookworm: TorchServe 0.12 runs on Java 17, which trixie no longer packages.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/torchserve/bin:$PATH \
    LOG_LOCATION=/tmp/logs METRICS_LOCATION=/tmp/logs HOME=/tmp
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
# The worker imports yaml and psutil; the handler needs numpy and safetensors.
RUN python -m venv /opt/torchserve \
 && /opt/torchserve/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/torchserve/bin/pip install torchserve==0.12.0 "pyyaml>=6" "psutil>=5" "numpy>=1.26" "safetensors>=0.4"
RUN groupadd --gid 10001 torchserve \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torchserve
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8082
CMD ["torchserve", "--help"]
