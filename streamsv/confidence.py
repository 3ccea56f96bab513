"""A calibrated confidence in [0, 1] beside the raw cosine.

A cosine's meaning shifts with the amount of speech behind it (short windows score lower for
the same voice) and with the model. The confidence is a logistic model of "this voice is the
profile's speaker" given the cosine and the window's seconds, fitted on dev-speaker trials with
genuine and impostor trials weighted equally (a prior of one half): of the trials it puts at p,
about a share p are genuine (``tools/fit_confidence.py`` prints that reliability table).

    logit p = b + w_cos * cos + w_dur * cos * ln(s / window) + w_len * ln(s / window)

The fitted coefficients are small JSON keyed by the model's fingerprint: shipped beside the
weights (``streamsv/weights/confidence.json``, refit with ``tools/fit_confidence.py``), and
optionally the user's own (``streamsv calibrate DIR --save`` writes ``.confidence.json`` into the
profiles folder, which wins). A model with no calibration still works: confidence is null and a
warning says how to fit one. A confidence threshold maps to a cosine threshold per duration
(``cosine_for``), so thresholds may be given in either unit.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StreamsvError, shown
from .profiles import DIR_MODE
from .safeio import PRIVATE_MODE, atomic_write, check_trusted, read_bounded
from .scoring import MIN_SCORED_SPEECH_S

FORMAT = "streamsv-confidence"
VERSION = 1
SHIPPED_PATH = Path(__file__).parent / "weights" / "confidence.json"
USER_FILE = ".confidence.json"          # in the profiles folder; the leading dot keeps it out of the profile list
MAX_FILE_BYTES = 1 << 20               # a calibration is ~300 bytes per model
MAX_MODELS = 64
SHARED_MODE = 0o644                    # the shipped calibration: readable by a service user
TRUST_REASON = "a calibration moves accept decisions"   # why one others could write is not used
N_COEF = 4
L2 = 1e-6                              # keeps the fit finite on separable data (the loss is weight-normalised)
NEWTON_STEPS = 50
P_EPS = 1e-6                           # confidences are clipped to [P_EPS, 1 - P_EPS] before inverting

log = logging.getLogger("streamsv.confidence")
_missing_warned: set[str] = set()  # fingerprints already warned about (see load)


@dataclass(frozen=True)
class ConfidenceModel:
    coef: tuple[float, float, float, float]     # bias, cosine, cosine x ln(s/window), ln(s/window)
    window_s: float
    fitted_on: str = ""
    trials: int = 0

    def _dur(self, seconds: float) -> float:
        # Shorter windows count as MIN_SCORED_SPEECH_S long: ln(0) is undefined.
        return math.log(min(max(float(seconds), MIN_SCORED_SPEECH_S), self.window_s) / self.window_s)

    def confidence(self, cosine: float, seconds: float) -> float:
        """P(the voice is the profile's speaker | cosine, seconds of speech), prior 1/2."""
        b, w_cos, w_dur, w_len = self.coef
        d = self._dur(seconds)
        z = b + (w_cos + w_dur * d) * float(cosine) + w_len * d
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def cosine_for(self, p: float, seconds: float) -> float:
        """The cosine at which the confidence reaches ``p`` for a window of ``seconds``."""
        b, w_cos, w_dur, w_len = self.coef
        d = self._dur(seconds)
        p = min(max(p, P_EPS), 1 - P_EPS)
        return (math.log(p / (1 - p)) - b - w_len * d) / (w_cos + w_dur * d)

    def to_json(self) -> dict:
        return {"coef": [round(c, 6) for c in self.coef], "window_s": self.window_s,
                "fitted_on": self.fitted_on, "trials": self.trials}


def _design(cosines: np.ndarray, seconds: np.ndarray, window_s: float) -> np.ndarray:
    d = np.log(np.clip(seconds, MIN_SCORED_SPEECH_S, window_s) / window_s)
    return np.stack([np.ones_like(cosines), cosines, cosines * d, d], axis=1)


def fit(cosines, seconds, genuine, window_s: float, fitted_on: str = "") -> ConfidenceModel:
    """Weighted logistic regression (Newton's method), genuine and impostor trials weighted equally."""
    x = _design(np.asarray(cosines, np.float64), np.asarray(seconds, np.float64), window_s)
    y = np.asarray(genuine, np.float64)
    n_gen, n_imp = float(y.sum()), float(len(y) - y.sum())
    if n_gen == 0 or n_imp == 0:
        raise StreamsvError("a confidence calibration needs both genuine and impostor trials")
    w = np.where(y > 0, 0.5 / n_gen, 0.5 / n_imp)
    beta = np.zeros(N_COEF)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60)))
        grad = x.T @ (w * (p - y)) + L2 * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + L2 * np.eye(N_COEF)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    model = ConfidenceModel(tuple(float(b) for b in beta), float(window_s), fitted_on, int(len(y)))
    # The confidence must rise with the cosine at every duration, or cosine_for is meaningless.
    for s in (MIN_SCORED_SPEECH_S, window_s):
        if beta[1] + beta[2] * math.log(s / window_s) <= 0:
            raise StreamsvError("confidence fit is not increasing in the cosine: too few or too mixed trials")
    return model


def reliability(confidences, genuine, bins: int = 10, balanced: bool = False) -> list[dict]:
    """Per confidence bin: trials, mean confidence, share genuine ("right" when accepting).

    ``balanced`` weights genuine and impostor trials to equal totals, the prior the confidence
    assumes, so that a table over all trials of a few speakers (mostly impostor) is comparable."""
    c = np.asarray(confidences, np.float64)
    y = np.asarray(genuine, np.float64)
    w = np.ones_like(c)
    if balanced and 0 < y.sum() < len(y):
        w = np.where(y > 0, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))
    idx = np.minimum((c * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()),
                         "confidence": float(np.average(c[m], weights=w[m])),
                         "genuine": float(np.average(y[m], weights=w[m])), "weight": float(w[m].sum())})
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """The bins' |mean confidence - share genuine|, weighted by each bin's share of the (weighted) trials."""
    total = sum(r["weight"] for r in rows)
    return sum(r["weight"] * abs(r["confidence"] - r["genuine"]) for r in rows) / total if total else float("nan")


def format_reliability(rows: list[dict]) -> str:
    lines = ["| confidence bin | trials | mean confidence | share genuine |", "|---|---:|---:|---:|"]
    lines += [f"| {r['lo']:.1f}-{r['hi']:.1f} | {r['n']} | {r['confidence']:.3f} | {r['genuine']:.3f} |" for r in rows]
    lines.append(f"expected calibration error {expected_calibration_error(rows):.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- storage

def _read(path: Path, trusted_only: bool = False) -> dict:
    """The calibration file's models (empty when absent); bounded and strictly typed."""
    if not os.path.lexists(path):
        return {}
    # Regular files only, read without blocking and at most MAX_FILE_BYTES (a FIFO or /dev/zero is refused).
    raw, st = read_bounded(path, MAX_FILE_BYTES, f"{shown(path)}: confidence calibration")
    if trusted_only:
        # Like a profile, a calibration others could have written is not used (min_confidence).
        check_trusted(st, path, shown(path), "the confidence calibration", TRUST_REASON)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:   # not UTF-8 or JSON, an integer of >4300 digits, nested too deep
        raise StreamsvError(f"{path}: corrupt confidence calibration ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise StreamsvError(f"{path}: not a streamsv confidence calibration (version {VERSION})")
    models = data.get("models")
    if not isinstance(models, dict) or len(models) > MAX_MODELS:
        raise StreamsvError(f"{path}: malformed confidence calibration (models)")
    return models


def _parse(entry: object, where: str) -> ConfidenceModel:
    try:
        coef = entry["coef"]
        if not isinstance(coef, list) or len(coef) != N_COEF:
            raise ValueError("coef")
        values = tuple(float(c) for c in coef)
        window_s = float(entry["window_s"])
        if not all(math.isfinite(v) for v in values + (window_s,)) or window_s <= 0:
            raise ValueError("non-finite")
        return ConfidenceModel(values, window_s, str(entry.get("fitted_on", ""))[:200], int(entry.get("trials", 0)))
    except (KeyError, TypeError, ValueError, OverflowError) as e:   # OverflowError: 1e999 trials, a 400-digit coef
        raise StreamsvError(f"{where}: malformed confidence calibration ({e})") from None


def load(fingerprint: str, profiles_dir: str | os.PathLike | None = None) -> ConfidenceModel | None:
    """The user's calibration for this model (profiles folder), else the shipped one, else None
    with a warning: everything works without it, only the confidence is missing."""
    candidates = ([Path(profiles_dir) / USER_FILE] if profiles_dir is not None else []) + [SHIPPED_PATH]
    damaged = False
    for path in candidates:
        try:
            models = _read(path, trusted_only=path != SHIPPED_PATH)
            if fingerprint in models:
                return _parse(models[fingerprint], f"{path}: {fingerprint}")
        except StreamsvError as e:
            log.warning("%s; ignoring it", e)
            damaged = True
    if damaged or fingerprint not in _missing_warned:  # plain absence: once per model and process
        _missing_warned.add(fingerprint)
        log.warning("no confidence calibration for model %s: confidence omitted (null); fit one with "
                    "`python -m tools.fit_confidence` or `streamsv calibrate DIR --save`", fingerprint)
    return None


def save(path: str | os.PathLike, fingerprint: str, model: ConfidenceModel, force: bool = False,
         shared: bool = False) -> Path:
    """Add or replace (with ``force``) this model's entry, keeping other models' entries; atomic.

    0600 like the profiles it sits beside (it was fitted on the user's voices), or 0644 when
    ``shared`` (the shipped file, which a service user must be able to read once installed)."""
    path = Path(path)
    models = dict(_read(path))
    if fingerprint in models and not force:
        raise StreamsvError(f"{path} already holds a calibration for model {fingerprint}; use --force to replace it")
    models[fingerprint] = model.to_json()
    if len(models) > MAX_MODELS:
        raise StreamsvError(f"{path}: more than {MAX_MODELS} models; remove old entries")
    # A private calibration's new folder is made as a profiles folder is (owner-only).
    path.parent.mkdir(mode=0o755 if shared else DIR_MODE, parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"format": FORMAT, "version": VERSION, "models": models}, indent=1, sort_keys=True) + "\n",
                 mode=SHARED_MODE if shared else PRIVATE_MODE)
    return path
