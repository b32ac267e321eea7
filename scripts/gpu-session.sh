#!/usr/bin/env bash
# The prepared run for a session whose task is lent a GPU machine (the `device` tool; 15 minutes of
# device time in all, one command of at most 10 minutes). One command does both GPU items:
#   issue 11: train CONFIG (default nih128-ca-long: the recipe of nih128/2, from which nih128/3 to
#             nih128/5, the default, trained on; from the start, 260 kimg) on the GPU, stopped with a
#             checkpoint after TRAIN_S seconds if its schedule is not done by then;
#   issue 16: bench/gpu_speed.py, the full-size generator at 256 / 512 / 1024 px against the paper's P100.
#
# Three steps:
#   bash scripts/gpu-session.sh prepare
#       here: copies the NIH adults' images and labels into .gpu/ (git ignores it; about 32 MB) and moves
#       the large tracked files (model_store's and runs/' weights, about 170 MB) to .gpu-aside/ outside
#       the checkout, because the device tool sends at most 64 MiB of working tree.
#   device run: command "bash scripts/gpu-session.sh run", carry [".gpu"], timeout_s 600
#       there: the training, then the benchmark; brings back at most 8 files under $OUT.
#   bash scripts/gpu-session.sh restore FILES_AT
#       here: puts the moved files back, and unpacks what came back (the run's records, generator and
#       checkpoint) into runs/CONFIG-gpu/, from which `thorax train --config CONFIG --run-dir
#       runs/CONFIG-gpu` resumes and `thorax evaluate --generator runs/CONFIG-gpu/generator` judges it.
# CONFIG must be the same for run and restore.
# Run `restore` even when the device call fails: it is what puts model_store's weights back.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ASIDE=${ASIDE:-$ROOT/../.gpu-aside}
DATA=${THORAX_DATA:-$ROOT/../shared/data/cxr256}
CONFIG=${CONFIG:-nih128-ca-long}
RUN_NAME=$CONFIG-gpu
PART=15m  # the device tool brings back files of at most 16 MiB

prepare() {
    rm -rf .gpu && mkdir -p .gpu/data/images
    head -1 "$DATA/labels.csv" >.gpu/data/labels.csv
    grep '^nih_' "$DATA/labels.csv" >>.gpu/data/labels.csv
    tail -n +2 .gpu/data/labels.csv | cut -d, -f1 | while read -r f; do
        cp "$DATA/images/$f" .gpu/data/images/
    done
    echo "prepare: $(($(wc -l <.gpu/data/labels.csv) - 1)) adult images in .gpu/data"
    mkdir -p "$ASIDE"
    git ls-files -z model_store runs | while IFS= read -r -d '' f; do
        if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 1000000 ]; then
            mkdir -p "$ASIDE/$(dirname "$f")" && mv "$f" "$ASIDE/$f"
        fi
    done
    echo "prepare: large tracked files moved to $ASIDE (run 'restore' afterwards)"
    echo "prepare: the working tree that travels: $(git ls-files -z | du -cb --files0-from=- 2>/dev/null |
        tail -1 | cut -f1) bytes tracked, plus $(du -sb .gpu | cut -f1) in .gpu"
}

run() {
    OUT=${OUT:-/tmp/gpu-session-out}
    mkdir -p "$OUT"
    export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1
    local python=${PYTHON:-python3} device=${DEVICE:-cuda}
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
      $python -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    } | tee "$OUT/machine.txt"
    # issue 11: SIGTERM makes the trainer write a checkpoint and stop; a rerun resumes from it.
    timeout -s TERM "${TRAIN_S:-330}" $python -m thorax.cli train --config "$CONFIG" --data .gpu/data \
        --run-dir .gpu/run --device "$device" --log-every 10 >"$OUT/train.log" 2>&1 || true
    tail -3 "$OUT/train.log"
    if [ -f .gpu/run/checkpoints/latest.json ]; then
        tar -C .gpu/run -cf "$OUT/run.tar" config.json log.jsonl split.json samples/latest.png generator
        local ckpt
        ckpt=$($python -c 'import json; print(json.load(open(".gpu/run/checkpoints/latest.json"))["checkpoint"])')
        ckpt=${ckpt%.json}
        tar -C .gpu/run -cf - "checkpoints/latest.json" "checkpoints/$ckpt.json" "checkpoints/$ckpt.safetensors" |
            split -b "$PART" - "$OUT/ckpt.tar.part-"
    fi
    # issue 16: the GPU speed table (about 3 minutes at 3 s a measurement).
    if [ "${SPEED:-yes}" = yes ]; then
        timeout "${SPEED_S:-200}" $python bench/gpu_speed.py --seconds "${SPEED_SECONDS:-3}" \
            --out "$OUT/gpu_speed.json" >"$OUT/gpu_speed.log" 2>&1 || true
        tail -12 "$OUT/gpu_speed.log"
    fi
    ls -la "$OUT"
}

restore() {
    if [ -d "$ASIDE" ]; then
        (cd "$ASIDE" && find . -type f -print0) | while IFS= read -r -d '' f; do
            mkdir -p "$(dirname "$f")" && mv "$ASIDE/$f" "$f"
        done
        rm -rf "$ASIDE"
        echo "restore: large tracked files are back"
    fi
    local from=${1:-}
    if [ -n "$from" ] && [ -f "$from/run.tar" ]; then
        mkdir -p "runs/$RUN_NAME"
        tar -C "runs/$RUN_NAME" -xf "$from/run.tar"
        if compgen -G "$from/ckpt.tar.part-*" >/dev/null; then
            cat "$from"/ckpt.tar.part-* | tar -C "runs/$RUN_NAME" -xf -
        fi
        echo "restore: the GPU run is in runs/$RUN_NAME"
        for f in machine.txt train.log gpu_speed.json gpu_speed.log; do
            if [ -f "$from/$f" ]; then cp "$from/$f" "runs/$RUN_NAME/"; fi
        done
    fi
    git status --short | head -20
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    restore) restore "${2:-}" ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
esac
