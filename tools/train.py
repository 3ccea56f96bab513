"""Train the SV-Mixer student: one-stage distillation plus fine-tuning (OS-KDFT, adapted).

    python tools/train.py --out runs/mixer                       # the shipped recipe (CPU)
    python tools/train.py --out runs/transformer --arch transformer   # the ablation
    python tools/train.py --out runs/mixer --resume              # continue after a stop

The frozen Resemblyzer teacher embeds each clean training utterance once (cached under
``cache/``); the student sees augmented crops of it (noise, reverberation, gain, speed) and
learns two things at once: to land near the teacher's utterance embedding through a linear
distillation head (1 - cosine), and to separate the labelled training speakers with an
additive-angular-margin softmax on its own embedding. Progress prints every few steps; a
checkpoint is written every ``--checkpoint-every`` steps so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.signal import fftconvolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import datasets  # noqa: E402  (tools/datasets.py)
from streamsv.embedder import save_checkpoint  # noqa: E402
from streamsv.features import SAMPLE_RATE, log_mel  # noqa: E402
from streamsv.model import ModelConfig, SpeakerEncoder, count_parameters  # noqa: E402

CACHE = REPO / "cache"
ASC_CLIPS_PER_ITEM = 3  # ASC clips are 1 s keywords: join three of one speaker
CORPUS_WEIGHTS = {"so": 0.4, "asc": 0.3, "ls": 0.3}  # sampling share of each corpus per batch


@dataclass
class Recipe:
    steps: int = 2400
    batch: int = 64
    min_crop_s: float = 1.0
    max_crop_s: float = 2.5
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 150
    aam_weight: float = 0.5
    aam_margin: float = 0.2
    aam_scale: float = 30.0
    margin_ramp_steps: int = 600
    noise_prob: float = 0.7
    snr_db: tuple[float, float] = (0.0, 20.0)
    reverb_prob: float = 0.3
    speed_prob: float = 0.2
    gain_db: float = 8.0
    seed: int = 1234


# ---------------------------------------------------------------- data

def load_waves(utts: list[datasets.Utterance], name: str) -> list[np.ndarray]:
    """Decoded audio, cached as one int16 blob so later runs skip the Opus decoding."""
    CACHE.mkdir(exist_ok=True)
    blob, index = CACHE / f"{name}.int16.npy", CACHE / f"{name}.json"
    keys = [str(u.path) for u in utts]
    if blob.exists() and index.exists() and json.loads(index.read_text())["keys"] == keys:
        data = np.load(blob, mmap_mode="r")
        bounds = json.loads(index.read_text())["bounds"]
        return [np.asarray(data[a:b], dtype=np.float32) / 32768 for a, b in bounds]
    waves = [datasets.read_audio(u.path) for u in utts]
    bounds = np.cumsum([0] + [len(w) for w in waves]).tolist()
    np.save(blob, np.concatenate([np.clip(w * 32768, -32768, 32767).astype(np.int16) for w in waves]))
    index.write_text(json.dumps({"keys": keys, "bounds": list(zip(bounds[:-1], bounds[1:]))}))
    return waves


def teacher_targets(utts: list[datasets.Utterance], waves: list[np.ndarray]) -> np.ndarray:
    """Resemblyzer utterance embeddings of the clean audio, computed once and cached."""
    path = CACHE / "teacher-train.npz"
    keys = np.array([str(u.path) for u in utts])
    if path.exists():
        cached = np.load(path)
        if np.array_equal(cached["keys"], keys):
            return cached["emb"]
    from teacher import Teacher  # tools/teacher.py: training-only dependency

    teacher, out = Teacher(), []
    for i in range(0, len(waves), 64):
        out.append(teacher.embed_batch(waves[i:i + 64]))
        print(f"\rteacher targets {min(i + 64, len(waves))}/{len(waves)}", end="", flush=True)
    print()
    emb = np.concatenate(out).astype(np.float32)
    np.savez(path, keys=keys, emb=emb)
    return emb


class CropSampler:
    """Draws labelled, augmented crops; the teacher target stays that of the clean utterance."""

    def __init__(self, utts, waves, targets, noises, recipe: Recipe):
        self.recipe, self.waves, self.targets, self.noises = recipe, waves, targets, noises
        self.rng = np.random.default_rng(recipe.seed)
        speakers = sorted({u.speaker for u in utts})
        self.speaker_index = {s: i for i, s in enumerate(speakers)}
        self.by_corpus: dict[str, dict[str, list[int]]] = {}
        for i, u in enumerate(utts):
            self.by_corpus.setdefault(u.corpus, {}).setdefault(u.speaker, []).append(i)
        self.corpora = sorted(self.by_corpus)
        weights = np.array([CORPUS_WEIGHTS[c] for c in self.corpora])
        self.corpus_p = weights / weights.sum()

    @property
    def n_speakers(self) -> int:
        return len(self.speaker_index)

    def _source(self, corpus: str, speaker: str) -> tuple[np.ndarray, np.ndarray]:
        items = self.by_corpus[corpus][speaker]
        if corpus == "asc":
            picked = self.rng.choice(items, ASC_CLIPS_PER_ITEM, replace=False)
            wave = np.concatenate([self.waves[i] for i in picked])
            target = self.targets[picked].mean(axis=0)
        else:
            i = items[self.rng.integers(len(items))]
            wave, target = self.waves[i], self.targets[i]
        return wave, target / np.linalg.norm(target)

    def _crop(self, wave: np.ndarray, length: int) -> np.ndarray:
        if len(wave) < length:
            wave = np.tile(wave, math.ceil(length / len(wave)))
        start = self.rng.integers(len(wave) - length + 1)
        return wave[start:start + length]

    def _augment(self, crop: np.ndarray, length: int) -> np.ndarray:
        r, rng = self.recipe, self.rng
        if rng.random() < r.reverb_prob:
            rt60 = rng.uniform(0.2, 0.8)
            t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
            rir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
            rir[0] = 1.0
            wet = fftconvolve(crop, rir)[: len(crop)]
            crop = wet * np.sqrt((crop ** 2).sum() / max((wet ** 2).sum(), 1e-9))
        if rng.random() < r.noise_prob:
            noise = self._crop(self.noises[rng.integers(len(self.noises))], len(crop))
            snr = rng.uniform(*r.snr_db)
            gain = np.sqrt((crop ** 2).mean() / max((noise ** 2).mean(), 1e-9) / 10 ** (snr / 10))
            crop = crop + gain * noise
        crop = crop * 10 ** (rng.uniform(-r.gain_db, r.gain_db) / 20)
        return np.clip(crop, -1, 1)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, rng = self.recipe, self.rng
        length = int(rng.uniform(r.min_crop_s, r.max_crop_s) * SAMPLE_RATE)
        crops, labels, targets = [], [], []
        for _ in range(r.batch):
            corpus = self.corpora[rng.choice(len(self.corpora), p=self.corpus_p)]
            speakers = sorted(self.by_corpus[corpus])
            speaker = speakers[rng.integers(len(speakers))]
            wave, target = self._source(corpus, speaker)
            speed = rng.choice([0.93, 1.07]) if rng.random() < r.speed_prob else 1.0
            crop = self._crop(wave, int(length * speed))
            if speed != 1.0:  # resample to `length`: pitch and tempo shift together
                crop = np.interp(np.linspace(0, len(crop) - 1, length), np.arange(len(crop)), crop)
            crops.append(self._augment(crop, length))
            labels.append(self.speaker_index[speaker])
            targets.append(target)
        return (torch.from_numpy(np.stack(crops).astype(np.float32)), torch.tensor(labels),
                torch.from_numpy(np.stack(targets).astype(np.float32)))


# ---------------------------------------------------------------- losses

class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace) over the training speakers."""

    def __init__(self, dim: int, n_classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        cosine = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + margin)
        logits = cosine.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


class Distiller(nn.Module):
    """Student, a linear head into the teacher's space, and the AAM classifier."""

    def __init__(self, cfg: ModelConfig, n_speakers: int, recipe: Recipe):
        super().__init__()
        self.student = SpeakerEncoder(cfg)
        self.to_teacher = nn.Linear(cfg.embedding_dim, 256)
        self.aam = AAMSoftmax(cfg.embedding_dim, n_speakers, recipe.aam_scale)

    def forward(self, waves, labels, targets, margin: float):
        with torch.no_grad():
            mel = torch.from_numpy(log_mel(waves.cpu().numpy()))
        emb = self.student(mel)
        distill = 1 - F.cosine_similarity(self.to_teacher(emb), targets).mean()
        return distill, self.aam(emb, labels, margin)


def mel_statistics(waves: list[np.ndarray], rng: np.random.Generator, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    mels = torch.cat([torch.from_numpy(log_mel(waves[i])) for i in rng.choice(len(waves), n, replace=False)])
    return mels.mean(dim=0), mels.std(dim=0).clamp(min=1e-3)


def learning_rate(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, student.pt)")
    ap.add_argument("--arch", default="mixer", choices=["mixer", "transformer"])
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--aam-weight", type=float, default=Recipe.aam_weight)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    recipe = Recipe(steps=args.steps, aam_weight=args.aam_weight, seed=args.seed)
    cfg = ModelConfig(arch=args.arch)
    torch.manual_seed(recipe.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    utts = datasets.training_utterances()
    dev = datasets.dev_speakers()
    assert not dev & {u.speaker for u in utts}, "dev speakers leaked into training"
    waves = load_waves(utts, "train-audio")
    noises = load_waves([datasets.Utterance("noise", p, "noise") for p in datasets.noise_files("train")], "train-noise")
    targets = teacher_targets(utts, waves)
    sampler = CropSampler(utts, waves, targets, noises, recipe)
    print(f"data ready in {time.time() - started:.0f} s: {len(utts)} utterances, {sampler.n_speakers} speakers, "
          f"{sum(map(len, waves)) / SAMPLE_RATE / 3600:.1f} h", flush=True)

    model = Distiller(cfg, sampler.n_speakers, recipe)
    model.student.stem.mel_mean, model.student.stem.mel_std = mel_statistics(waves, np.random.default_rng(recipe.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    step, elapsed = 0, 0.0
    last = args.out / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        sampler.rng = np.random.default_rng([recipe.seed, step])  # a fresh, still seeded stream
        torch.manual_seed(recipe.seed + step)
        print(f"resumed at step {step}")
    print(f"{args.arch}: {count_parameters(model.student):,} parameters; recipe {asdict(recipe)}", flush=True)

    log = open(args.out / "log.jsonl", "a")
    window: list[tuple[float, float]] = []
    t0 = time.time() - elapsed
    model.train()
    while step < recipe.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        margin = recipe.aam_margin * min(1.0, step / recipe.margin_ramp_steps)
        waves_b, labels, targets_b = sampler.batch()
        distill, aam = model(waves_b, labels, targets_b, margin)
        loss = distill + recipe.aam_weight * aam
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        window.append((distill.item(), aam.item()))
        if step % 20 == 0 or step == recipe.steps:
            d, a = np.mean(window, axis=0)
            window.clear()
            spent = time.time() - t0
            eta = spent / step * (recipe.steps - step)
            print(f"step {step}/{recipe.steps}  distill {d:.3f}  aam {a:.2f}  lr {learning_rate(step, recipe):.2e}  "
                  f"{spent / 60:.1f} min, eta {eta / 60:.1f} min", flush=True)
            log.write(json.dumps({"step": step, "distill": d, "aam": a, "minutes": spent / 60}) + "\n")
            log.flush()
        if step % args.checkpoint_every == 0 or step == recipe.steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "elapsed": time.time() - t0}, last)
            save_checkpoint(args.out / "student.pt", model.student, {
                "recipe": asdict(recipe), "arch": args.arch, "step": step, "train_minutes": (time.time() - t0) / 60,
                "teacher": "resemblyzer 0.1.4 VoiceEncoder", "speakers": sampler.n_speakers})
    print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min -> {args.out / 'student.pt'}")


if __name__ == "__main__":
    main()
