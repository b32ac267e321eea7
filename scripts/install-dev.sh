#!/usr/bin/env bash
# Installs Thorax with every side (training, service, client) and the test tools into .venv.
# `pip install torch==2.13.0` takes the CPU wheel that these machines keep on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[training,evaluate,torchserve,service,client,test]"
# DICOM validation in the gateway tests: dciodvfy from Debian's dicom3tools (skipped when present).
if ! command -v dciodvfy >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools
  else
    echo "install-dev: install dicom3tools (dciodvfy) for the DICOM tests" >&2
  fi
fi
# The console's browser tests: Debian's headless Chromium and its driver (skipped when present).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "install-dev: install chromium and chromium-driver for the console's browser tests" >&2
  fi
fi
