"""A runtime install has no torch: serving works without it, and building says what is missing.

Each check runs in a fresh interpreter whose imports of torch, transformers, peft and onnx (the
`build` extra) fail, as on an install without that extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD_ONLY = ("torch", "transformers", "peft", "onnx")

#: Put first on the meta path: a finder that fails every import of a build-only package.
BLOCK = f"""
import importlib.abc, sys

class _BuildOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BUILD_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _BuildOnly())
"""

SERVE = """
import importlib, pkgutil
import services

for info in pkgutil.walk_packages(services.__path__, "services."):
    if not info.name.endswith(".__main__"):
        importlib.import_module(info.name)
from services.classifier.engine import Engine

engine = Engine.from_model_dir(sys.argv[1], intra_op_threads=1)
(result,) = engine.classify(["What are the side effects of ibuprofen?"])
print(result.label)
loaded = sorted(n for n in sys.modules if n.split(".")[0] in {*BUILD_ONLY, "modelkit"})
print(loaded)
"""


def _run(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", f"BUILD_ONLY = {BUILD_ONLY!r}\n{BLOCK}\n{program}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_the_blocker_blocks(repo_root: Path) -> None:
    done = _run("import torch", cwd=repo_root)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


def test_every_service_module_imports_and_classifies_without_torch(repo_root: Path) -> None:
    model = repo_root / "models" / "loraroute-domain"
    assert (model / "build_info.json").is_file(), f"{model} is not built; run `make model`"
    done = _run(SERVE, str(model), cwd=repo_root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["medical", "[]"]


def test_build_without_torch_names_the_extra(repo_root: Path, tmp_path: Path) -> None:
    program = "from modelkit.cli.build import main\nraise SystemExit(main(sys.argv[1:]))"
    argv = ["--force", "--no-cache", "--head", "domain", "--out", str(tmp_path)]
    done = _run(program, *argv, cwd=repo_root)
    assert done.returncode == 1
    assert "building needs the `build` extra" in done.stderr
    assert "pip install -e '.[cpu,build]'" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left
