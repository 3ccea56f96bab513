#!/usr/bin/env bash
# Training/evaluation-only dependencies: the Resemblyzer teacher and its audio stack.
# resemblyzer is installed with --no-deps: it declares the old `webrtcvad` sdist, which
# would build from source and shadow `webrtcvad-wheels`, the distribution the package uses.
# Its real needs (librosa, scipy, torch, numpy, webrtcvad) are installed explicitly here.
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" -m pip install "librosa>=0.10" "scipy>=1.10" "webrtcvad-wheels>=2.0.11"
"$PY" -m pip install --no-deps "resemblyzer==0.1.4"
# Both must import: the teacher, and webrtcvad (from webrtcvad-wheels) for the package.
"$PY" - <<'PY'
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
import webrtcvad
from resemblyzer import VoiceEncoder
webrtcvad.Vad(2)
VoiceEncoder("cpu", verbose=False)
print("train deps ok: resemblyzer + webrtcvad-wheels")
PY
