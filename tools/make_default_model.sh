#!/usr/bin/env bash
# Reproduce the shipped model (streamsv/weights/student.onnx, .int8.onnx, .pool.onnx) from ../shared/data, on the CPU.
# Needs the training extra: bash tools/install-train-deps.sh
# 80 minutes of training here (2000 steps, 1 torch thread), plus ~12 minutes the first time for
# decoding the audio and caching the teacher's targets.
#
# The shipped weights (fingerprint 86dbb680b6d34c2d) were trained by the recipe of commit
# $RECIPE_COMMIT. training/train.py (tools/train.py then) has since moved on to the issue-9 candidate recipe (unlabeled
# speech, pitch/telephone/EQ/frequency-mask augmentation, AAM 0.2 on labelled crops only; README,
# Evaluation: measured, not shipped), so this script trains with that commit's own train.py, from a
# git worktree of it, and exports the checkpoint with today's exporter.
# RECIPE=current trains today's training/train.py instead (the candidate; it was measured at --steps 3200).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE_COMMIT=995a548
run="${RUN:-runs/mixer}"
export STREAMSV_DATA="${STREAMSV_DATA:-$(cd .. && pwd)/shared/data}"
if [ "${RECIPE:-shipped}" = current ]; then
    trainer=(-m training.train)
else
    recipe="runs/recipe-$RECIPE_COMMIT"
    [ -e "$recipe/.git" ] || git worktree add --detach "$recipe" "$RECIPE_COMMIT"
    trainer=("$recipe/tools/train.py")   # that commit's own layout: a script that finds its own streamsv
fi
python3 "${trainer[@]}" --out "$run" --steps "${STEPS:-2000}" --threads 1 ${RESUME:+--resume}
python3 -m training.export_weights "$run/student.pt" streamsv/weights/ --force
# Optional, measured but not shipped (README, Evaluation): a centring + WCCN scoring backend.
#   python3 -m training.fit_backend "$run/student.pt" --out "$run/student+backend.pt"
python3 -m training.eval --student "shipped=streamsv/weights/student.onnx" --systems student,teacher,mfcc \
    --sets speechocean-dev,asc-test --conditions clean --durations full
