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
    [
        *sorted((REPO / "services").rglob("__init__.py")),
        REPO / "schemas" / "__init__.py",
        *sorted((REPO / "modelkit").rglob("__init__.py")),
        REPO / "loraroute" / "__init__.py",
    ],
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


# The model toolkit: serving never imports it, it reads only the classifier's model readers,
# and its modules import each other without a cycle. Every import counts, function-local and
# relative ones included.

TOOLKIT = "modelkit"
TOOLKIT_MAY_READ = {
    "services.classifier.tokens",
    "services.classifier.backend",
    "services.classifier.onnx_backend",
    "services.classifier.engine",
    "services.classifier.model_dir",
    "services.classifier.errors",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it: `from a import b` counts as `a` and,
    where `a.b` is a module of this repository, `a.b`; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            for alias in node.names:
                candidate = REPO.joinpath(*f"{module}.{alias.name}".split("."))
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    names.add(f"{module}.{alias.name}")
    return names


def _within(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def test_services_never_import_the_toolkit() -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(REPO / "services")
        for name in sorted(_all_imports(path))
        if _within(name, TOOLKIT)
    ]
    assert not bad, "\n".join(bad)


def test_the_toolkit_reads_only_the_classifiers_model_readers() -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules(REPO / TOOLKIT)
        for name in sorted(_all_imports(path))
        if _within(name, "services") and name not in TOOLKIT_MAY_READ | {"services"}
    ]
    assert not bad, "\n".join(bad)


def _import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` (module -> modules it imports) as a path, or [] when none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return []

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return []


def _toolkit_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _modules(REPO / TOOLKIT)}
    return {
        name: {
            other
            for other in _all_imports(path)
            # A package's own __init__ is not an edge back from its modules.
            if other in modules and other != name and not name.startswith(other + ".")
        }
        for name, path in modules.items()
    }


def test_toolkit_modules_import_each_other_without_a_cycle() -> None:
    cycle = _import_cycle(_toolkit_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _import_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    graph = _toolkit_graph()
    assert "modelkit.plan" in graph["modelkit.train"]  # edges are seen, function-local too
    assert "modelkit.export" in graph["modelkit.build"]
