#!/usr/bin/env bash
# Reproduce the shipped model (streamsv/weights/student.onnx, .int8.onnx, .pool.onnx and its
# confidence calibration) from ../shared/data, on the CPU, one torch thread.
# Needs the training extra: bash tools/install-train-deps.sh
#
# Two stages (README, The model; streamsv/weights/MODEL_CARD.md):
#  1. The base: the recipe of commit $RECIPE_COMMIT, 2000 steps (80 minutes here), trained with that
#     commit's own train.py from a git worktree of it. Its weights (fingerprint 86dbb680b6d34c2d,
#     the model shipped until 2026-11-30) are kept at tools/baseline/student.npz, so by default
#     stage 2 starts from that file; BASE=train re-trains the base first and starts from it.
#  2. The fine-tune with today's training/train.py, on the base's first two blocks (--blocks 2: the
#     other four dropped with their share of the head's mix; half the base's compute): 3,600 steps,
#     about 35 minutes here, lr 5e-4, AAM weight 0.5, the teacher's whole-utterance targets, no
#     unlabeled speech, no pitch shift, the telephone channel on 20% of crops, no microphone EQ or
#     frequency mask.
# Then the export (checked against torch; the weights also to training/shipped.npz, which the tests
# hold the graphs to), the confidence calibrations (fp32 and int8) and the
# out-of-domain evaluation. The first stage's decoding and teacher targets are cached in cache/
# (about 12 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE_COMMIT=995a548
run="${RUN:-runs/default}"
export STREAMSV_DATA="${STREAMSV_DATA:-$(cd .. && pwd)/shared/data}"

base=tools/baseline/student.npz
if [ "${BASE:-kept}" = train ]; then
    recipe="runs/recipe-$RECIPE_COMMIT"
    [ -e "$recipe/.git" ] || git worktree add --detach "$recipe" "$RECIPE_COMMIT"
    # that commit's own layout: a script that finds its own streamsv
    python3 "$recipe/tools/train.py" --out "$run-base" --steps 2000 --threads 1 ${RESUME:+--resume}
    base="$run-base/student.pt"
fi

python3 -m training.train --out "$run" --init "$base" --blocks 2 --steps 3600 --lr 5e-4 --warmup-steps 50 \
    --aam-weight 0.5 --utterance-targets --unlabeled-share 0 --pitch-prob 0 --channel-prob 0.2 0 0 \
    --threads 1 ${RESUME:+--resume}
python3 -m training.export_weights "$run/student.pt" streamsv/weights/ --force --baseline-npz training/shipped.npz
rm -f streamsv/weights/confidence.json   # calibrations are per model: start the file afresh
python3 -m tools.fit_confidence
python3 -m tools.fit_confidence --model streamsv/weights/student.int8.onnx
python3 -m training.eval --student "shipped=streamsv/weights/student.onnx" --systems student,teacher \
    --durations full --wide
