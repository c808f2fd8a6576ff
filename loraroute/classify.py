"""`loraroute classify TEXT...`: classify texts with the configured model and print the result.

Without `--config`, every model label is its own category and no threshold applies; with
it, the config's categories (`mmlu_categories` mappings included), threshold, model
directory, spelling correction and inference threads are used, exactly as the classifier
worker would.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.classifier.engine import Classification, Engine
from services.classifier.errors import ClassifierError, LabelMappingError, ModelDirError

__all__ = ["DEFAULT_MODEL_DIR", "main"]

#: The model directory `loraroute model build` writes for the default head.
DEFAULT_MODEL_DIR = Path("models/loraroute-domain")


@dataclass(frozen=True)
class _Settings:
    model_dir: Path
    category_mapping_path: Path | None
    category_labels: Mapping[str, Sequence[str] | None] | None
    threshold: float | None
    use_cpu: bool
    intra_op_threads: int
    inter_op_threads: int
    correct_spelling: bool


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraroute classify",
        description="Classify texts and print category, confidence and the top categories.",
    )
    p.add_argument("texts", nargs="+", metavar="TEXT", help="text(s) to classify")
    p.add_argument(
        "--model",
        type=Path,
        help=f"model directory (default: the config's, else {DEFAULT_MODEL_DIR})",
    )
    p.add_argument("--config", type=Path, help="config file: categories, threshold, threads")
    p.add_argument("--top", type=int, default=3, help="how many categories to list (default 3)")
    p.add_argument(
        "--variant",
        choices=("fp32", "int8"),
        help="run onnx/model_<variant>.onnx instead of the directory's default model",
    )
    p.add_argument(
        "--correct-spelling",
        action=argparse.BooleanOptionalAction,
        help="mend misspelt words before classifying (default: the config's, else on)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    return p


def _settings(args: argparse.Namespace) -> _Settings:
    if args.config is None:
        spelling = True if args.correct_spelling is None else args.correct_spelling
        return _Settings(args.model or DEFAULT_MODEL_DIR, None, None, None, True, 0, 1, spelling)
    from schemas.config import load_config

    config, _warnings = load_config(args.config)
    model = config.classifier.category_model
    mapping = None
    if args.model is None and model.category_mapping_path is not None:
        mapping = Path(model.category_mapping_path)
    return _Settings(
        model_dir=args.model or Path(model.model_id),
        category_mapping_path=mapping,
        category_labels={c.name: c.mmlu_categories for c in config.categories},
        threshold=model.threshold,
        use_cpu=model.use_cpu,
        intra_op_threads=config.inference.intra_op_threads,
        inter_op_threads=config.inference.inter_op_threads,
        correct_spelling=config.inference.correct_spelling
        if args.correct_spelling is None
        else args.correct_spelling,
    )


def _describe(text: str, result: Classification, top: int, threshold: float | None) -> str:
    below = threshold is not None and (result.category is None or result.confidence < threshold)
    if result.category is None:
        head = f"category: none (labels outside every category: {result.confidence:.3f})"
    elif below:
        head = (
            f"category: none ({result.category} {result.confidence:.3f} "
            f"< threshold {threshold:.2f}; the default model answers)"
        )
    else:
        head = f"category: {result.category}  confidence: {result.confidence:.3f}"
    lines = [head]
    if result.label != result.category:
        lines.append(f"model label: {result.label} ({result.label_confidence:.3f})")
    ranked = sorted(result.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:top]
    width = max((len(c) for c, _ in ranked), default=0)
    lines += [f"  {c:<{width}}  {p:.3f}" for c, p in ranked]
    lines.append(f"tokens: {result.tokens}" + (" (truncated)" if result.truncated else ""))
    preview = text if len(text) <= 70 else text[:67] + "..."
    return f"{preview!r}\n" + "\n".join(lines)


def _as_json(text: str, result: Classification, top: int, threshold: float | None) -> str:
    ranked = sorted(result.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:top]
    selected = result.category
    if threshold is not None and result.confidence < threshold:
        selected = None
    return json.dumps(
        {
            "text": text,
            "category": selected,
            "top_category": result.category,
            "confidence": round(result.confidence, 6),
            "threshold": threshold,
            "label": result.label,
            "label_confidence": round(result.label_confidence, 6),
            "top": [{"category": c, "probability": round(p, 6)} for c, p in ranked],
            "tokens": result.tokens,
            "truncated": result.truncated,
        },
        ensure_ascii=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute classify`; return 0, 1 when inference fails, 2 on bad input or model."""
    args = _parser().parse_args(argv)
    if args.top < 1:
        print("loraroute classify: --top must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
        engine = Engine.from_model_dir(
            settings.model_dir,
            category_labels=settings.category_labels,
            onnx_file=f"onnx/model_{args.variant}.onnx" if args.variant else None,
            category_mapping_path=settings.category_mapping_path,
            use_cpu=settings.use_cpu,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            correct_spelling=settings.correct_spelling,
        )
    except (ModelDirError, LabelMappingError, OSError, ValueError) as exc:
        # ValueError covers schemas.config.ConfigError, which lists every problem with its path.
        print(f"loraroute classify: {exc}", file=sys.stderr)
        return 2
    try:
        results = engine.classify(args.texts)
    except ClassifierError as exc:
        print(f"loraroute classify: {exc}", file=sys.stderr)
        return 1
    render = _as_json if args.json else _describe
    blocks = [
        render(t, r, args.top, settings.threshold) for t, r in zip(args.texts, results, strict=True)
    ]
    print(("\n" if args.json else "\n\n").join(blocks))
    return 0
