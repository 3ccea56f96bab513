"""Fit the scoring backend of a trained student on the training speakers, and write it in.

    python -m training.fit_backend runs/mixer/student.pt --out runs/mixer/student+backend.pt

The backend centres unit embeddings on the training mean and whitens the within-speaker
scatter (WCCN, shrunk towards the identity by ``--shrink``), so that cosine scoring stops
spending its range on directions that vary within one voice (channel, words, noise).
Only training speakers are used; dev speakers never are.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from streamsv.features import SAMPLE_RATE
from training import datasets
from training.train import load_waves, save_checkpoint

MAX_PER_SPEAKER = 20
SINGLE_CLIP_PIECE_S = 3.0  # a speaker with one clip (LibriSpeech) is cut into pieces of this length


def training_embeddings(embedder, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    utts = datasets.training_utterances()
    waves = load_waves(utts, "train-audio")
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_speaker.setdefault(u.speaker, []).append(i)
    vectors, labels = [], []
    for label, (speaker, items) in enumerate(sorted(by_speaker.items())):
        if len(items) == 1:
            wave = waves[items[0]]
            step = int(SINGLE_CLIP_PIECE_S * SAMPLE_RATE)
            clips = [wave[i:i + step] for i in range(0, len(wave) - step // 2, step)]
        else:
            picked = rng.choice(items, min(MAX_PER_SPEAKER, len(items)), replace=False)
            clips = [waves[i] for i in picked]
        for clip in clips:
            vectors.append(embedder.embed(clip))
            labels.append(label)
        print(f"\rembedded {label + 1}/{len(by_speaker)} speakers", end="", flush=True)
    print()
    return np.stack(vectors), np.array(labels)


def fit_backend(vectors: np.ndarray, labels: np.ndarray, shrink: float) -> dict[str, torch.Tensor]:
    center = vectors.mean(axis=0)
    centred = vectors - center
    within = np.zeros((vectors.shape[1],) * 2)
    counted = 0
    for label in np.unique(labels):
        members = centred[labels == label]
        if len(members) > 1:
            deviation = members - members.mean(axis=0)
            within += deviation.T @ deviation
            counted += len(members)
    within /= max(counted, 1)
    within = (1 - shrink) * within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    eigenvalues, eigenvectors = np.linalg.eigh(within)
    whiten = eigenvectors @ np.diag(eigenvalues ** -0.5) @ eigenvectors.T
    return {"center": torch.tensor(center, dtype=torch.float32), "whiten": torch.tensor(whiten, dtype=torch.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shrink", type=float, default=0.3, help="0 = full WCCN, 1 = centring only")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from training.export_weights import export, read_checkpoint
    from streamsv.embedder import Embedder

    model, fingerprint, _, _ = read_checkpoint(args.checkpoint)
    files = export(model, fingerprint, None, {})  # no backend: fit on the network's own embeddings
    embedder = Embedder.from_onnx(files[".onnx"], files[".pool.onnx"])
    vectors, labels = training_embeddings(embedder)
    backend = fit_backend(vectors, labels, args.shrink)
    payload = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    meta = dict(payload["meta"], backend={"kind": "centre + WCCN", "shrink": args.shrink,
                                          "fitted_on": f"{len(vectors)} clips of {len(set(labels))} training speakers"})
    save_checkpoint(args.out, model, meta, backend)
    print(f"wrote {args.out}: backend fitted on {len(vectors)} clips, {len(set(labels))} speakers")


if __name__ == "__main__":
    main()
