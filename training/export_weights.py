"""Export a trained student to the ONNX model streamsv runs: fp32 and int8 step graphs and the
pooling graph, checked against the torch definition before anything is written.

    python -m training.export_weights runs/mixer/student.pt streamsv/weights/ --force
    python -m training.export_weights old-student.npz OUT_DIR          # a format-1 .npz works too

Writes OUT/student.onnx (fp32 step), OUT/student.int8.onnx (the same step with int8 weights:
onnxruntime's dynamic quantization of every MatMul/Gemm with a weight initializer but the
stem's two, which stay float: see quantize_int8) and OUT/student.pool.onnx (pooling head + unit
norm + the scoring backend if the checkpoint has one).
OUT may also name the fp32 step file (OUT/NAME.onnx). Existing files need --force.

Fingerprints: the fp32 model keeps the checkpoint's (``weights_fingerprint``: the SHA-256 of the
model's config and weights, first 16 hex digits; a .npz's stored one), so profiles enrolled with
the checkpoint, the .npz or the numpy runtime stay valid, and the same weights reproduced by the
recipe get the same fingerprint (the .pt file also records its training time, so its hash would
not). The int8 model's embeddings differ a little, so it gets its own (``<fp32
fingerprint>-int8``): profiles are bound to the variant that made them.

Checks before writing: the ONNX step, fed random push sizes, gives the torch model's offline
embedding to cosine >= MIN_COSINE; the int8 model's embedding stays within MIN_INT8_COSINE of
the fp32 one on the same audio (a gross quantization failure, not an accuracy figure: training/eval.py
measures that).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from streamsv.embedder import MODEL_NAME, ORT_LOG_ERRORS_ONLY, POOL_SUFFIX, VARIANT_SUFFIXES, Embedder
from streamsv.errors import StreamsvError
from streamsv.features import SAMPLE_RATE, log_mel
from training.model import (CHECKPOINT_FORMAT, ExportPool, ModelDimensions, SpeakerEncoder, count_macs_per_second,
                            count_stream_macs_per_second, export_onnx, with_metadata)

MIN_COSINE = 0.9999
MIN_INT8_COSINE = 0.98
# Weight initializers of the stem's matmuls (ExportStep's folded stem_w, the stem's output linear):
# int8 keeps these float. stem_w carries the mel normalisation folded in (each input row divided
# by that mel's std), so one per-tensor int8 scale rounds the rows of small-std mels coarsely.
# Mean (1 - cosine to fp32) on 174 training clips, one group quantized at a time: stem_w 0.54e-4,
# the stem's output linear 0.20e-4, the blocks' 30 MatMuls together 0.05e-4, their 6 group-mix
# Gemms 0.00e-4; all quantized 0.79e-4 (the int8 graph before), all but these two 0.09e-4.
FLOAT_WEIGHT_PREFIXES = ("stem_w", "encoder.stem.")
QUANTIZED_OPS = ("MatMul", "Gemm")
CHECK_SECONDS = 6.0
NPZ_MODEL_PREFIX = "model."


def weights_fingerprint(config: dict, state: dict[str, torch.Tensor], backend: dict[str, torch.Tensor] | None) -> str:
    """A model's identity, from what decides its embeddings only: the SHA-256 of its config (JSON,
    sorted keys) and of every weight and backend tensor (name, shape, float32 bytes, in name order),
    first 16 hex digits."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    tensors = {**{f"model.{k}": v for k, v in state.items()}, **{f"backend.{k}": v for k, v in (backend or {}).items()}}
    for name in sorted(tensors):
        array = tensors[name].detach().to(torch.float32).contiguous().numpy()
        digest.update(f"{name}{tuple(array.shape)}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def read_checkpoint(path: Path) -> tuple[SpeakerEncoder, str, dict | None, dict]:
    """A .pt checkpoint (torch weights_only) or a format-1 .npz -> (model, fingerprint, backend, meta)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != CHECKPOINT_FORMAT:
                raise ValueError(f"unsupported weights format {int(data['format'])}")
            config = json.loads(str(data["config"]))
            state = {k[len(NPZ_MODEL_PREFIX):]: torch.from_numpy(data[k].copy()) for k in data.files if k.startswith(NPZ_MODEL_PREFIX)}
            backend = {k[len("backend."):]: torch.from_numpy(data[k].copy()) for k in data.files if k.startswith("backend.")} or None
            fingerprint = str(data["fingerprint"])
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    else:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {payload.get('format')!r}")
        config, state = payload["config"], {k: v.float() for k, v in payload["state_dict"].items()}
        backend = payload.get("backend")
        fingerprint = weights_fingerprint(config, state, backend)
        meta = payload.get("meta") or {}
    model = SpeakerEncoder(ModelDimensions(**config))
    model.load_state_dict(state)
    return model.eval(), fingerprint, backend, meta


def stem_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm nodes of ``model`` (an onnx ModelProto) whose weight's name
    starts with one of FLOAT_WEIGHT_PREFIXES: the nodes int8 keeps float."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS
            and any(x.startswith(FLOAT_WEIGHT_PREFIXES) for x in n.input[1:2])]


def quantize_int8(step: bytes) -> bytes:
    """Dynamic int8 quantization of the step graph's weight matmuls, the stem's excepted
    (activations stay float and are quantized per push at run time; no calibration audio).

    Measured against the alternatives (README, The model: int8): static QDQ quantization,
    calibrated on training pushes, was slower than fp32 here and further from it; reduce_range
    was 5x further; uint8 weights and asymmetric weights no closer; per-channel weights are
    refused by onnxruntime's dynamic int8 matmul for the batched group weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep_float = stem_nodes(onnx.load_from_string(step))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "step.onnx", Path(tmp) / "step.int8.onnx"
        src.write_bytes(step)
        # onnxruntime rewrites a Gemm as "<name>_MatMul" + Add before it quantizes: name both.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                         nodes_to_exclude=[*keep_float, *(f"{name}_MatMul" for name in keep_float)])
        quantized = dst.read_bytes()
    left_float = stem_nodes(onnx.load_from_string(quantized))
    if len(keep_float) != len(FLOAT_WEIGHT_PREFIXES) or len(left_float) != len(keep_float):
        raise StreamsvError(f"int8: expected the stem's {len(FLOAT_WEIGHT_PREFIXES)} matmuls to stay float, found "
                            f"{len(keep_float)} in the step and {len(left_float)} float after quantization; nothing written")
    return quantized


def optimized(model_bytes: bytes) -> bytes:
    """The graph after onnxruntime's portable (EXTENDED) optimisations, metadata kept: fusions
    and constant folding done once here instead of at every start (a session on the shipped
    step graph took 82 ms of CPU to create before, 24 ms after). The daemon loads the result with
    no further optimisation (ORT_DISABLE_ALL in streamsv/embedder.py): the hardware-specific level
    (ALL) on top made the same embeddings at the same step time here, for ~7 ms more CPU a start."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = ORT_LOG_ERRORS_ONLY
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return with_metadata(out.read_bytes(), _meta(model_bytes))


def check_audio(seconds: float = CHECK_SECONDS) -> np.ndarray:
    """Noise under a slow random envelope: exercises every state without needing any data."""
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    envelope = np.repeat(rng.uniform(0, 1, n // 800 + 1), 800)[:n]
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def streamed(embedder: Embedder, wave: np.ndarray, seed: int = 0) -> np.ndarray:
    """The embedding of ``wave`` pushed in random sizes (partial mel windows, odd frame counts)."""
    rng = np.random.default_rng(seed)
    stream = embedder.stream(window_s=len(wave) / SAMPLE_RATE + 1)
    i = 0
    while i < len(wave):
        n = int(rng.integers(1, 12000))
        stream.push(wave[i:i + n])
        i += n
    return stream.embedding()


def torch_embedding(model: SpeakerEncoder, wave: np.ndarray, backend: dict | None) -> np.ndarray:
    with torch.inference_mode():
        features, logits, _ = model.encode(torch.from_numpy(log_mel(wave))[None])
        return ExportPool(model, backend)(features[0], logits[0]).numpy()


def export(model: SpeakerEncoder, fingerprint: str, backend: dict | None, meta: dict) -> dict[str, bytes]:
    """{suffix: bytes} for the fp32 step, the int8 step and the pool; raises if a check fails."""
    info = {"macs_per_second": round(count_macs_per_second(model)),
            "stream_macs_per_second": round(count_stream_macs_per_second(model)), "meta": meta}
    step, pool = export_onnx(model, fingerprint, backend, info)
    int8 = with_metadata(quantize_int8(step), {"fingerprint": f"{fingerprint}-int8",
                                               "info": json.dumps({**json.loads(_meta(step)["info"]), "variant": "int8"})})
    step, int8, pool = optimized(step), optimized(int8), optimized(pool)
    wave = check_audio()
    reference = torch_embedding(model, wave, backend)
    fp32_vector = streamed(Embedder.from_onnx(step, pool), wave)
    cosine = float(fp32_vector @ reference)
    if cosine < MIN_COSINE:
        raise StreamsvError(f"the ONNX step disagrees with the torch model (cosine {cosine:.6f} < {MIN_COSINE}); nothing written")
    int8_cosine = float(streamed(Embedder.from_onnx(int8, pool), wave) @ fp32_vector)
    if int8_cosine < MIN_INT8_COSINE:
        raise StreamsvError(f"the int8 model strays from fp32 (cosine {int8_cosine:.4f} < {MIN_INT8_COSINE}); nothing written")
    print(f"checks: ONNX fp32 streamed vs torch offline cosine {cosine:.6f}; int8 vs fp32 cosine {int8_cosine:.6f}")
    return {VARIANT_SUFFIXES["fp32"]: step, VARIANT_SUFFIXES["int8"]: int8, POOL_SUFFIX: pool}


def _meta(model_bytes: bytes) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}


def output_stem(out: Path) -> Path:
    """OUT (a folder, or OUT/NAME.onnx) -> OUT/NAME, the prefix of the three files."""
    if out.suffix == ".onnx":
        return out.with_name(out.name.split(".")[0])
    if out.suffix in (".npz", ".pt"):
        raise StreamsvError(f"{out}: the output is a folder or a NAME.onnx path now, not {out.suffix}")
    return out / MODEL_NAME


def model_files(out: Path) -> dict[str, Path]:
    """{suffix: path} of the three files an export writes for OUT (a folder or NAME.onnx)."""
    stem = output_stem(Path(out))
    return {suffix: stem.with_name(stem.name + suffix) for suffix in (*VARIANT_SUFFIXES.values(), POOL_SUFFIX)}


def write_model(files: dict[str, bytes], paths: dict[str, Path]) -> None:
    """An export's graphs to their paths, each atomically; the fp32 step (what loaders look
    for) last, so a half-written model is never found."""
    for suffix in (POOL_SUFFIX, VARIANT_SUFFIXES["int8"], VARIANT_SUFFIXES["fp32"]):
        write_atomic(paths[suffix], files[suffix], force=True)


def export_to_folder(model: SpeakerEncoder, fingerprint: str, out: Path, backend: dict | None = None,
                     meta: dict | None = None, force: bool = False) -> dict[str, Path]:
    """Export ``model`` (checked as the CLI checks it) and write its three graphs for OUT; existing
    files need ``force``. Returns {suffix: path}. For tools that export modules they built."""
    paths = model_files(out)
    refuse_existing(paths, force)
    write_model(export(model, fingerprint, backend, meta or {}), paths)
    return paths


def refuse_existing(paths: dict[str, Path], force: bool) -> None:
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise StreamsvError(f"{', '.join(existing)} exist (pass --force to overwrite)")


def write_atomic(path: Path, data: bytes, force: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; refuse to overwrite
    without ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise StreamsvError(f"{path} exists (pass --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def npz_bytes(model: SpeakerEncoder, fingerprint: str, backend: dict | None, meta: dict) -> bytes:
    """The weights as a format-1 .npz (float32 arrays and JSON, no pickle): what read_checkpoint
    reads back, and what tools/baseline's frozen numpy runtime runs beside the ONNX graphs."""
    arrays = {NPZ_MODEL_PREFIX + k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    arrays.update({f"backend.{k}": np.asarray(v, np.float32) for k, v in (backend or {}).items()})
    arrays["format"] = np.array(CHECKPOINT_FORMAT)
    arrays["config"] = np.array(json.dumps(asdict(model.cfg)))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    arrays["fingerprint"] = np.array(fingerprint)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) or format-1 weights (.npz)")
    ap.add_argument("out", type=Path, help="output folder (writes student.onnx, student.int8.onnx, student.pool.onnx) or NAME.onnx")
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    ap.add_argument("--baseline-npz", type=Path, metavar="PATH",
                    help="also write the weights as a format-1 .npz, which training.train --init and tools/baseline's "
                         "numpy runtime read (the shipped model's: training/shipped.npz)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if not args.checkpoint.is_file():
            raise StreamsvError(f"{args.checkpoint}: not found")
        paths = model_files(args.out)
        refuse_existing(paths if args.baseline_npz is None else {**paths, "baseline": args.baseline_npz}, args.force)
        try:
            model, fingerprint, backend, meta = read_checkpoint(args.checkpoint)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint (pickle refused, truncated) is the user's file
            raise StreamsvError(f"{args.checkpoint}: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        files = export(model, fingerprint, backend, meta)
        write_model(files, paths)
        if args.baseline_npz is not None:
            write_atomic(args.baseline_npz, npz_bytes(model, fingerprint, backend, meta), force=True)
            print(f"wrote {args.baseline_npz}")
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for suffix, path in paths.items():
        print(f"wrote {path} ({len(files[suffix]) / 1e6:.2f} MB)")
    print(f"fingerprint {fingerprint} (int8: {fingerprint}-int8)")
    return 0


def embedder_from(path: str | Path, variant: str = "fp32") -> Embedder:
    """An Embedder for any student file, for tools (eval, benchmarks): a step graph (.onnx; the
    variant picks its .int8.onnx sibling) is loaded as the daemon loads it; a training checkpoint
    (.pt) or format-1 .npz is exported in memory first, with the same checks as the CLI."""
    from streamsv.embedder import load_embedder, model_paths

    path = Path(path)
    if variant not in VARIANT_SUFFIXES:
        raise StreamsvError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANT_SUFFIXES)}")
    if path.suffix == ".onnx":
        stem = path.with_name(path.name.split(".")[0])
        return load_embedder(stem.with_name(stem.name + VARIANT_SUFFIXES[variant]))
    files = export(*read_checkpoint(path))
    return Embedder.from_onnx(files[VARIANT_SUFFIXES[variant]], files[POOL_SUFFIX])


if __name__ == "__main__":
    sys.exit(main())
