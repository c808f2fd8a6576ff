"""Cards, resolution and runtime load/unload, without a server."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.errors import ErrorResponse
from services.mockvllm.registry import Registry, Resolved, sanitize_message
from services.mockvllm.settings import LoraModule, MockSettings


def _registry(**kw: object) -> Registry:
    settings = MockSettings(
        model="/m/base",
        served_model_names=("base",),
        lora_modules=(LoraModule("a", "/l/a"),),
        **kw,  # type: ignore[arg-type]
    )
    return Registry(settings)


def test_resolution() -> None:
    reg = _registry()
    assert reg.resolve(None) == Resolved("base", None)
    assert reg.resolve("") == Resolved("base", None)
    resolved = reg.resolve("a")
    assert isinstance(resolved, Resolved) and resolved.adapter and resolved.adapter.path == "/l/a"
    missing = reg.resolve("b")
    assert isinstance(missing, ErrorResponse) and missing.status == 404
    assert missing.error.message == "The model `b` does not exist. Valid aliases: base."


def test_cards() -> None:
    cards = _registry().model_list().data
    assert [(c.id, c.root, c.parent, c.max_model_len) for c in cards] == [
        ("base", "/m/base", None, 4096),
        ("a", "/l/a", "base", None),
    ]


def _adapter(tmp_path: Path, rank: int) -> str:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return str(tmp_path)


def test_load_checks_files_and_rank(tmp_path: Path) -> None:
    reg = _registry(max_lora_rank=8)
    assert (
        reg.load("b", _adapter(tmp_path, 8), False)
        == "Success: LoRA adapter 'b' added successfully."
    )
    assert list(reg.adapters) == ["a", "b"]
    wide = reg.load("c", _adapter(tmp_path, 16), False)
    assert isinstance(wide, ErrorResponse) and wide.status == 500
    nowhere = reg.load("d", "relative/nowhere", False)
    assert isinstance(nowhere, ErrorResponse) and nowhere.status == 404
    assert "relative/nowhere" in nowhere.error.message


def test_path_check_any_accepts_anything() -> None:
    reg = _registry(lora_path_check="any")
    assert isinstance(reg.load("b", "/does/not/exist", False), str)


def test_unload() -> None:
    reg = _registry()
    assert reg.unload("a") == "Success: LoRA adapter 'a' removed successfully."
    again = reg.unload("a")
    assert isinstance(again, ErrorResponse) and again.status == 404


def test_sanitize_message_hides_system_paths_only() -> None:
    assert sanitize_message("No adapter found for /tmp/x/y") == "No adapter found for <path>"
    assert sanitize_message("at models/a/b.bin here") == "at <path> here"
    assert sanitize_message("No adapter found for models/x") == "No adapter found for models/x"
