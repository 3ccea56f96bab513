"""Turning embeddings into decisions: cosine scores, threshold + margin, smoothing, calibration.

score  = cosine between the live embedding and a profile centroid (unit vectors: -1..1).
accept = best score >= threshold AND best - runner-up >= min_margin; otherwise "unknown".
A margin keeps two similar enrolled voices from being confused (unknown rather than a guess when
the evidence favours neither); by default it is 0: on the live-room conversations it cost more
enrolled voices left unknown than the confusions it saved (docs/live-rooms.md, fifth pass).
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

# The shipped model's equal-error threshold on 3 s windows of the 25 speechocean762 dev speakers
# (`streamsv calibrate` on them prints 0.480; the README has the command).
DEFAULT_THRESHOLD = 0.48
# The live-room conversations' tuning split (docs/live-rooms.md, fifth pass): a margin of 0.05 left
# 2 in 100 decisions more unknown than 0 and saved fewer confusions of the two enrolled voices
# (0.02 sat between). 0 means the best profile is named whenever it reaches the threshold.
DEFAULT_MIN_MARGIN = 0.0
# Hops a live decision's scores are averaged over. 1: the latest window alone. Each window already
# spans window_s (3 s) with a hop of 0.5 s, so averaging 3 hops reached back up to 4 s, into the
# voice before a change the change tests found late or missed; on the tuning conversations every
# averaging tried (2-6 hops, exponential, the window's embeddings pooled) decided worse than none.
DEFAULT_SMOOTHING_HOPS = 1
# Cosine scores grow with the speech behind an embedding (for the same voice, 1 s windows score
# lower than 3 s ones), so the bar is lowered by this much per second the window is short of
# window_s. Calibrated with the threshold: 0.389 at 1 s -> (0.480 - 0.389) / 2 s = 0.046.
DEFAULT_DURATION_SLOPE = 0.046
# The SNR-aware bar (ScoringConfig.snr_slope) comes down by at most this much: a window 20 dB under
# the reference at the default slope, as tried on the conversations (babble and TV at 5-15 dB SNR).
MAX_SNR_SHIFT = 0.1
# The shortest speech a score is given for: `verify` refuses less, and the confidence calibration
# treats shorter windows as this long (its fit starts here).
MIN_SCORED_SPEECH_S = 0.5
PAIRWISE_MIN = 8  # numpy's float sums switch from one-by-one to pairwise blocks at this many values


@dataclass(frozen=True)
class Decision:
    speaker: str | None        # accepted profile name, None for unknown
    accepted: bool
    score: float               # best cosine (nan if no profiles)
    best: str | None           # best-scoring profile even when rejected
    scores: dict[str, float] = field(default_factory=dict)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    flat = v.ravel(order="K")
    n = float(np.sqrt(flat.dot(flat)))  # np.linalg.norm's own arithmetic, without its Python wrapper
    return v / n if n > 0 else v


def cosine_scores(embedding: np.ndarray, centroids: dict[str, np.ndarray]) -> dict[str, float]:
    e = unit(embedding)
    return {name: float(np.dot(e, unit(c))) for name, c in centroids.items()}


def threshold_for(threshold: float, speech_s: float, window_s: float,
                  slope: float = DEFAULT_DURATION_SLOPE) -> float:
    """The accept threshold for an embedding over ``speech_s`` seconds (``threshold`` applies to a full window)."""
    return threshold - slope * max(0.0, window_s - speech_s)


def snr_shift(snr_db: float | None, slope: float, ref_db: float) -> float:
    """How far the bar comes down for a window whose speech stands ``snr_db`` above the noise
    floor: ``slope`` per dB under ``ref_db``, at most MAX_SNR_SHIFT; 0 when the SNR is unknown."""
    if snr_db is None or not math.isfinite(snr_db):
        return 0.0
    return min(MAX_SNR_SHIFT, slope * max(0.0, ref_db - snr_db))


def decide(scores: dict[str, float], threshold: float = DEFAULT_THRESHOLD,
           min_margin: float = DEFAULT_MIN_MARGIN) -> Decision:
    if not scores:
        return Decision(None, False, float("nan"), None, {})
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, top = ranked[0]
    runner = ranked[1][1] if len(ranked) > 1 else -1.0
    ok = top >= threshold and (top - runner) >= min_margin
    return Decision(best if ok else None, ok, top, best, dict(scores))


class Smoother:
    """Average per-profile scores over the last ``hops`` decisions of one voice.

    Averaging scores (rather than voting labels) lets one noisy hop nudge, not flip, the label;
    ``reset()`` at every new voice so turns never mix. One hop (the default) passes each hop's
    scores through as they are.
    """

    def __init__(self, hops: int = DEFAULT_SMOOTHING_HOPS) -> None:
        self.hops = max(1, int(hops))
        self._recent: collections.deque[dict[str, float]] = collections.deque(maxlen=self.hops)

    def reset(self) -> None:
        self._recent.clear()

    def push(self, scores: dict[str, float]) -> dict[str, float]:
        self._recent.append(scores)
        out = {}
        for n in scores:  # profiles present now (a reload may have removed some)
            out[n] = mean([s[n] for s in self._recent if n in s])
        return out


def mean(values: list[float]) -> float:
    """``float(np.mean(values))`` bit for bit, without numpy's call overhead for a hop's few scores:
    numpy adds fewer than PAIRWISE_MIN float64 values one by one from 0.0, as ``sum`` does."""
    if 0 < len(values) < PAIRWISE_MIN and all(type(v) is float for v in values):
        return sum(values) / len(values)
    return float(np.mean(values))


# --------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    threshold: float
    eer: float                 # equal error rate at the EER threshold
    far: float                 # false-accept rate at the chosen threshold
    frr: float                 # false-reject rate at the chosen threshold
    n_genuine: int
    n_impostor: int


def _rates(genuine: np.ndarray, impostor: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = np.sort(genuine)
    i = np.sort(impostor)
    frr = np.searchsorted(g, thr, side="left") / len(g)          # genuine below threshold
    far = 1.0 - np.searchsorted(i, thr, side="left") / len(i)    # impostor at or above threshold
    return far, frr


def valid_target_far(target_far: float) -> bool:
    """A false-accept rate ``calibrate`` can aim at: finite, 0 <= x < 1. 0 is reachable (above every
    impostor score), 1 or more accepts every impostor, so it is no target."""
    return math.isfinite(target_far) and 0.0 <= target_far < 1.0


def calibrate(genuine: np.ndarray, impostor: np.ndarray, target_far: float | None = None) -> Calibration:
    """Threshold from score lists: the EER point, or the lowest threshold with FAR <= target_far."""
    g = np.asarray(genuine, dtype=np.float64)
    i = np.asarray(impostor, dtype=np.float64)
    if len(g) == 0 or len(i) == 0:
        raise ValueError("calibration needs both genuine and impostor scores")
    if target_far is not None and not valid_target_far(target_far):
        raise ValueError(f"target_far must be a rate in [0, 1), got {target_far!r}")
    cands = np.unique(np.concatenate([g, i, [np.nextafter(max(g.max(), i.max()), np.inf)]]))
    far, frr = _rates(g, i, cands)
    k = int(np.argmin(np.abs(far - frr)))
    eer = float((far[k] + frr[k]) / 2)
    if target_far is None:
        # Midway between neighbours at the EER crossing is less brittle than a data point.
        thr = float(cands[k])
        if k > 0:
            thr = float((cands[k - 1] + cands[k]) / 2)
            far_m, frr_m = _rates(g, i, np.array([thr]))
            if abs(far_m[0] - frr_m[0]) > abs(far[k] - frr[k]):
                thr = float(cands[k])
    else:
        # The last candidate is above every score (FAR 0), so some threshold always qualifies.
        thr = float(cands[np.nonzero(far <= target_far)[0][0]])
    far_t, frr_t = _rates(g, i, np.array([thr]))
    return Calibration(thr, eer, float(far_t[0]), float(frr_t[0]), len(g), len(i))
