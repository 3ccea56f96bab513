#!/usr/bin/env bash
# Reproduce the shipped weights (streamsv/weights/student.pt) from ../shared/data, on the CPU.
# Needs the training extra: bash tools/install-train-deps.sh
# About 80 minutes of training on 2 cores (1 torch thread), plus ~15 minutes the first time
# for decoding the audio and caching the teacher's targets under cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${RUN:-runs/mixer}"
python3 tools/train.py --out "$run" --steps 2000 --threads 1 ${RESUME:+--resume}
python3 tools/fit_backend.py "$run/student.pt" --out "$run/student+backend.pt"
cp "$run/student+backend.pt" streamsv/weights/student.pt
python3 tools/eval.py --student "shipped=streamsv/weights/student.pt" --systems student,teacher,mfcc \
    --sets speechocean-dev,asc-test --conditions clean --durations full
