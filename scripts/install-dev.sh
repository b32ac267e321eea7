#!/usr/bin/env bash
# Installs Thorax with every side (training, service, client) and the test tools into .venv.
# `pip install torch==2.13.0` takes the CPU wheel that these machines keep on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[training,torchserve,service,client,test]"
