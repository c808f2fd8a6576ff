"""modelkit/build.py: content hash, the build cache, and one real build."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from modelkit import build as build_mod
from modelkit.build import build, build_hash, prune_cache
from modelkit.heads import ADAPTER_DIR, Memory, save_head, save_memory

LABELS = ["technical", "medical", "legal", "general"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LORAROUTE_CACHE_DIR", str(root))
    return root / "models"


def _head(path: Path, seed: int = 0, max_length: int = 64) -> Path:
    """A head with random weights (test input only; never committed)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 1, (len(LABELS), 384)).astype(np.float32)
    bias = rng.normal(0, 0.1, len(LABELS)).astype(np.float32)
    save_head(
        path, LABELS, weight, bias, {"pooling": "mean", "normalize": True, "max_length": max_length}
    )
    return path


def _fake_built(directory: Path, digest: str) -> None:
    """A directory that looks complete for `digest` (file contents are not inspected)."""
    (directory / "onnx").mkdir(parents=True)
    for name in (
        "model.onnx",
        "tokenizer.json",
        "config.json",
        "category_mapping.json",
        "onnx/model_fp32.onnx",
        "onnx/model_int8.onnx",
    ):
        (directory / name).write_text(name)
    info = {
        "hash": digest,
        "variants": {v: {"file": f} for v, f in build_mod.VARIANT_FILES.items()},
    }
    (directory / "build_info.json").write_text(json.dumps(info))


def test_hash_follows_the_head_files_and_the_variant(tmp_path: Path) -> None:
    head = _head(tmp_path / "domain")
    first = build_hash(head)
    assert build_hash(head) == first
    assert build_hash(head, "fp32") != first
    meta = json.loads((head / "meta.json").read_text())
    (head / "meta.json").write_text(json.dumps(meta | {"note": "retrained"}))
    assert build_hash(head) != first
    (head / "extra.txt").write_text("x")
    assert len({first, build_hash(head)}) == 2


def test_same_hash_is_a_no_op(tmp_path: Path, cache: Path) -> None:
    head = _head(tmp_path / "domain")
    out = tmp_path / "models" / "loraroute-domain"
    _fake_built(out, build_hash(head))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = build(head, out)
    assert result.status == "current"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_incomplete_directory_is_restored_from_the_cache(tmp_path: Path, cache: Path) -> None:
    head = _head(tmp_path / "domain")
    digest = build_hash(head)
    _fake_built(cache / digest, digest)
    out = tmp_path / "models" / "loraroute-domain"
    _fake_built(out, digest)
    (out / "onnx" / "model_int8.onnx").unlink()
    messages: list[str] = []
    result = build(head, out, progress=messages.append)
    assert result.status == "restored" and "restoring" in messages[0]
    assert (out / "onnx" / "model_int8.onnx").read_text() == "onnx/model_int8.onnx"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_cache_keeps_the_most_recently_used_entries(tmp_path: Path, cache: Path) -> None:
    for i in range(5):
        _fake_built(cache / f"{i:064x}", f"{i:064x}")
        os.utime(cache / f"{i:064x}", (1_000_000 + i, 1_000_000 + i))
    (cache / ".staging-in-progress").mkdir()
    # A restore counts as a use: entry 0, the oldest, becomes the newest.
    head = _head(tmp_path / "domain")
    digest = build_hash(head)
    _fake_built(cache / digest, digest)
    os.utime(cache / digest, (1, 1))
    build(head, tmp_path / "models" / "loraroute-domain")
    removed = prune_cache(keep=3)
    assert sorted(p.name for p in removed) == [f"{i:064x}" for i in range(3)]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".staging-in-progress", digest, f"{3:064x}", f"{4:064x}"]
    )
    assert prune_cache(keep=3) == []


def test_a_head_with_bad_files_is_refused(tmp_path: Path, cache: Path) -> None:
    head = _head(tmp_path / "domain")
    np.savez(head / "head.npz", weight=np.zeros((3, 384), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="do not fit 4 labels"):
        build(head, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"labels\.json is missing"):
        build(tmp_path / "nothing", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_build_with_a_lora_adapter(tmp_path: Path, cache: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from modelkit.encoder import load_encoder
    from modelkit.export import HeadModel, torch_logits
    from modelkit.heads import load_head
    from services.classifier.engine import Engine

    head_dir = _head(tmp_path / "domain", max_length=32)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        peft_model = get_peft_model(
            load_encoder(None), LoraConfig(r=2, target_modules=["query", "value"])
        )
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0); give it an effect
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(str(head_dir / ADAPTER_DIR))
    rng = np.random.default_rng(3)
    stored = rng.normal(size=(50, 384))
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    memory = Memory(
        np.rint(stored * 127).astype(np.int8),
        rng.integers(0, len(LABELS), 50),
        rng.uniform(0.5, 2, 50).astype(np.float32),
        k=5,
        tau=0.05,
        mix=0.5,
        temperature=1.2,
    )
    save_memory(head_dir, memory)

    # Without activation ranges only fp32 is built, and it is the default.
    out = tmp_path / "models" / "loraroute-domain"
    messages: list[str] = []
    result = build(head_dir, out, threads=1, use_cache=False, progress=messages.append)
    info = json.loads((out / "build_info.json").read_text())
    assert set(info["variants"]) == {"fp32"} and info["default_variant"] == "fp32"
    assert (out / "model.onnx").read_bytes() == (out / "onnx" / "model_fp32.onnx").read_bytes()
    assert any("loraroute model ranges" in m for m in messages)

    from modelkit.encoder import Encoder
    from modelkit.ranges import RANGES_FILE, measure_ranges, write_ranges

    tokenize = Encoder(max_length=32).tokenize
    calibration = ["what is a mutex", "my head hurts", "can I sue my landlord", "x " * 40]
    merged = load_encoder(head_dir / ADAPTER_DIR)
    write_ranges(head_dir, measure_ranges(merged, tokenize, calibration), {"texts": 4})
    assert (head_dir / RANGES_FILE).is_file() and build_hash(head_dir) != result.hash

    result = build(head_dir, out, threads=1)
    assert result.status == "built"
    info = json.loads((out / "build_info.json").read_text())
    assert info["hash"] == result.hash and info["encoder_lora"] is True
    assert info["memory_rows"] == 50
    assert info["variants"]["fp32"]["max_abs_logit_delta_vs_torch"] < 1e-3
    assert (cache / result.hash / "model.onnx").is_file()
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["padding"]["strategy"] == "BatchLongest"
    assert tokenizer["truncation"]["max_length"] == 32

    # The ONNX graph must compute what peft computes with the adapter unmerged, memory included.
    engine = Engine.from_model_dir(out, onnx_file="onnx/model_fp32.onnx", intra_op_threads=1)
    texts = ["what is a mutex", "my head hurts", "x " * 100]
    batch = engine.tokenizer.encode(texts)
    reference = HeadModel(peft_model, load_head(head_dir))
    expected = torch_logits(reference, batch)
    got = engine.backend.logits(batch)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert reference.memory is not None
    # Every weight product of the six encoder layers is quantized; the head and memory are not.
    assert info["default_variant"] == "int8"
    assert info["variants"]["int8"]["quantized_products"] == 36
    assert (out / "model.onnx").read_bytes() == (out / "onnx" / "model_int8.onnx").read_bytes()

    # Static int8: a text's probabilities do not depend on its batch mates. Alone and in a
    # batch of varied lengths (so with padding) they may differ by float rounding only; see
    # tests/e2e/test_route_agreement.py for the tolerance.
    int8 = Engine.from_model_dir(out, intra_op_threads=1, max_batch_size=64)
    mixed = [*texts, "why is the sky blue", "ok", "contract " * 25, "dose of aspirin for a child"]
    batched = int8.classify(mixed)
    for text, b in zip(mixed, batched, strict=True):
        (alone,) = int8.classify([text])
        np.testing.assert_allclose(alone.label_probabilities, b.label_probabilities, atol=1e-4)
        assert alone.label == b.label
    assert info["variants"]["int8"]["max_abs_prob_delta_alone_vs_batch"] < 1e-4

    assert build(head_dir, out).status == "current"
    shutil.rmtree(out)
    assert build(head_dir, out).status == "restored"
    assert sorted(os.listdir(out / "onnx")) == ["model_fp32.onnx", "model_int8.onnx"]
