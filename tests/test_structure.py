"""Structure guards: coupling runs one way, and every package declares its surface.

Services import `schemas` and `services.common`, never each other; `schemas` imports only msgspec,
PyYAML and the standard library. The `loraroute` command package is the one place that may import
several services (its sub-commands start or drive them); nothing imports it. The rule is checked on
the source, so a violation fails here before it becomes a hidden dependency between services that
are deployed apart.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = sorted(
    p.name for p in (REPO / "services").iterdir() if p.is_dir() and (p / "__init__.py").exists()
)
SCHEMAS_MAY_IMPORT = {"msgspec", "yaml", "schemas"}
#: The `loraroute` command: the one package that may import several services.
COMMAND_PACKAGE = "loraroute"
#: The project's top-level packages (tests aside): every folder of the root with an `__init__.py`.
PACKAGES = sorted(
    p.name
    for p in REPO.iterdir()
    if p.is_dir() and (p / "__init__.py").exists() and p.name != "tests"
)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "common"])
def test_services_do_not_import_each_other(service: str) -> None:
    others = {f"services.{s}" for s in SERVICES if s not in {service, "common"}}
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(REPO / "services" / service)
        for name in _imports(path)
        if any(name == o or name.startswith(o + ".") for o in others)
    ]
    assert not bad, "\n".join(bad)


def test_common_imports_no_service() -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(REPO / "services" / "common")
        for name in _imports(path)
        if name.startswith("services.") and not name.startswith("services.common")
    ]
    assert not bad, "\n".join(bad)


def test_schemas_import_only_msgspec_yaml_and_stdlib() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(REPO / "schemas")
        for name in _imports(path)
        if name.split(".")[0] not in stdlib | SCHEMAS_MAY_IMPORT
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "init",
    [*sorted((REPO / "services").rglob("__init__.py")), REPO / "schemas" / "__init__.py"],
    ids=lambda p: str(p.parent.relative_to(REPO)),
)
def test_every_module_declares_all(init: Path) -> None:
    missing = [
        str(path.relative_to(REPO))
        for path in _modules(init.parent)
        if path.parent == init.parent
        and path.name not in {"__init__.py", "__main__.py"}
        and "__all__" not in path.read_text(encoding="utf-8")
    ]
    assert not missing, f"modules without __all__: {missing}"


def _services_imported(folder: Path) -> set[str]:
    """The services (not `common`) that the modules under `folder` import."""
    return {
        name.split(".")[1]
        for path in _modules(folder)
        for name in _imports(path)
        if name.startswith("services.") and name.split(".")[1] != "common"
    }


@pytest.mark.parametrize(
    "folder",
    [
        *(p for p in PACKAGES if p not in {COMMAND_PACKAGE, "services"}),
        *(f"services/{s}" for s in SERVICES),
    ],
)
def test_only_the_command_package_imports_several_services(folder: str) -> None:
    imported = _services_imported(REPO / folder)
    assert len(imported) <= 1, f"{folder} imports the services {sorted(imported)}"


def test_no_package_imports_the_command_package() -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for package in PACKAGES
        if package != COMMAND_PACKAGE
        for path in _modules(REPO / package)
        for name in _imports(path)
        if name.split(".")[0] == COMMAND_PACKAGE
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "path", sorted((REPO / "services").glob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_top_level_services_modules_import_only_schemas_and_common(path: Path) -> None:
    bad = [
        name
        for name in _imports(path)
        if name.split(".")[0] in PACKAGES
        and name.split(".")[0] != "schemas"
        and name != "services.common"
        and not name.startswith("services.common.")
    ]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_command_package_modules_declare_all() -> None:
    missing = [
        str(path.relative_to(REPO))
        for path in _modules(REPO / COMMAND_PACKAGE)
        if "__all__" not in path.read_text(encoding="utf-8")
    ]
    assert not missing, f"modules without __all__: {missing}"
