"""Average the weights of fine-tunes of one model (a "model soup", Wortsman et al. 2022).

    python -m training.soup runs/soup/student.pt runs/ft5/student.pt runs/ft6/student.pt
    python -m training.soup runs/wise/student.pt tools/baseline/student.npz:0.5 runs/ft5/student.pt:0.5

Each input is a .pt checkpoint or format-1 .npz, optionally ``:WEIGHT`` (default 1; weights are
normalised). Only fine-tunes of one start average meaningfully (they share a loss basin), so the
shapes must match. Writes a .pt checkpoint that training/export_weights.py exports like any other.
Measured, not shipped (docs/evaluation.md: weight soups).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from training.export_weights import read_checkpoint
from training.train import save_checkpoint


def parse_ingredient(text: str) -> tuple[Path, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not weight.replace(".", "", 1).isdigit():
        return Path(text), 1.0
    return Path(path), float(weight)


def average_weights(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same keys and shapes."""
    if not states or len(states) != len(weights) or sum(weights) <= 0 or min(weights) < 0:
        raise ValueError("soup: one non-negative weight per state dict, not all zero")
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError("soup: the models differ in shape (only fine-tunes of one model average)")
    total = sum(weights)
    return {k: sum(w / total * state[k].float() for state, w in zip(states, weights)) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the soup's .pt checkpoint")
    ap.add_argument("ingredients", nargs="+", help="checkpoints (.pt or .npz), each optionally :WEIGHT")
    ap.add_argument("--force", action="store_true", help="overwrite OUT")
    args = ap.parse_args()
    if args.out.exists() and not args.force:
        raise SystemExit(f"error: {args.out} exists (--force to overwrite)")
    parts = [parse_ingredient(text) for text in args.ingredients]
    try:
        models = [read_checkpoint(path) for path, _ in parts]
        if any(backend is not None for _, _, backend, _ in models):
            raise ValueError("soup: weights with a scoring backend do not average")
        soup = average_weights([m.state_dict() for m, *_ in models], [w for _, w in parts])
        model = models[0][0]
        model.load_state_dict(soup)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    ingredients = [{"path": str(p), "weight": w, "fingerprint": m[1]} for (p, w), m in zip(parts, models)]
    save_checkpoint(args.out, model, {"soup": ingredients})
    print(f"{args.out}: the weighted mean of {len(parts)} checkpoints")


if __name__ == "__main__":
    main()
