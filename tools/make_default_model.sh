#!/usr/bin/env bash
# Reproduce the shipped model (streamsv/weights/student.onnx, .int8.onnx, .pool.onnx) from ../shared/data, on the CPU.
# Needs the training extra: bash tools/install-train-deps.sh
# 80 minutes of training here (2000 steps, 1 torch thread, beside a second training run), plus
# ~12 minutes the first time for decoding the audio and caching the teacher's targets under cache/.
# NOTE (issue 9): tools/train.py's recipe has changed since the shipped weights (86dbb680) were
# trained: it now adds unlabeled speech, pitch/telephone/EQ/frequency-mask augmentation and AAM 0.2
# on labelled crops only. The shipped weights come from this command run in a checkout of commit
# 995a548 (e.g. `git worktree add ../streamsv-995a548 995a548`); run in today's tree it trains the
# issue-9 candidate recipe instead (README, Evaluation: measured, not shipped; that run used
# --steps 3200).
set -euo pipefail
cd "$(dirname "$0")/.."
run="${RUN:-runs/mixer}"
python3 tools/train.py --out "$run" --steps 2000 --threads 1 ${RESUME:+--resume}
python3 tools/export_weights.py "$run/student.pt" streamsv/weights/ --force
# Optional, measured but not shipped (README, Evaluation): a centring + WCCN scoring backend.
#   python3 tools/fit_backend.py "$run/student.pt" --out "$run/student+backend.pt"
python3 tools/eval.py --student "shipped=streamsv/weights/student.onnx" --systems student,teacher,mfcc \
    --sets speechocean-dev,asc-test --conditions clean --durations full
