"""Export a training checkpoint (.pt) to the runtime weights file (.npz) that streamsv ships.

    python tools/export_weights.py runs/mixer/student.pt streamsv/weights/student.npz

The .npz holds the same float32 weights, the model config and the training metadata as JSON,
and no pickle; the numpy runtime loads it without torch. Both files give the same
fingerprint, so profiles enrolled with either stay valid. The script checks that the runtime
reproduces the torch model's embeddings before writing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamsv.embedder import TorchEncoder, load_embedder, save_weights  # noqa: E402

MIN_COSINE = 0.9999


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)

    embedder = load_embedder(args.checkpoint)
    meta = torch.load(args.checkpoint, map_location="cpu", weights_only=True).get("meta") or {}
    wave = (0.1 * np.random.default_rng(0).standard_normal(3 * embedder.sample_rate)).astype(np.float32)
    runtime = embedder.embed(wave)
    reference = TorchEncoder(embedder.to_torch())
    from streamsv.features import log_mel

    features, logits = reference.encode(log_mel(wave), reference.new_state())
    cosine = float(runtime @ embedder.finish(reference.pool(features, logits)))
    if cosine < MIN_COSINE:
        print(f"runtime and torch disagree (cosine {cosine:.6f}); not written", file=sys.stderr)
        return 1
    save_weights(args.out, embedder, meta)
    print(f"wrote {args.out} (fingerprint {embedder.fingerprint}, runtime vs torch cosine {cosine:.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
