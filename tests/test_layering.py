"""Layering, checked statically with `ast` over every production module (a lazy import inside a
function counts too):

* no production module (`colorflow_core/` but `testing/`, `nodes/`, the pack's `__init__.py`)
  imports `colorflow_core.testing`, the random-weight release builders of the tests and benchmarks;
* `colorflow_core` never imports ComfyUI (`comfy`, `folder_paths`, ...) nor the node layer above it.

Each module gets its dotted name under a stand-in for the pack folder (``<pack>.nodes.model``), so
relative imports resolve as they do when ComfyUI imports the pack (``from ..colorflow_core import
testing`` in `nodes/` is caught). The crafted sources below prove each rule can fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.parity import REPO_ROOT

PACK = "<pack>"  # the pack folder: ComfyUI imports it as a package under a name of its own
TESTING = ("colorflow_core", "testing")
# ComfyUI's top-level modules a custom-node pack can import (`nodes` is also our own node layer).
COMFYUI = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "comfy_config", "folder_paths", "server",
           "execution", "nodes", "node_helpers", "latent_preview"}


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """(dotted name under `PACK`, is a package) of the module at ``path`` in the pack folder ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([PACK, *parts]), is_package


def _resolve(name: str, level: int, package: str) -> str:
    """``importlib``'s resolution of ``level`` leading dots + ``name`` from ``package``; above the pack
    folder the missing levels read ``<above>``."""
    if level == 0:
        return name
    bits = package.split(".")
    up = level - 1
    base = bits[:len(bits) - up] if up < len(bits) else ["<above>"]
    return ".".join(base + ([name] if name else []))


def _constant_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything ``source`` imports: ``import``, ``from ... import``
    (the module and each ``module.name``, which may be a submodule) and ``importlib.import_module`` /
    ``__import__`` with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, package)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            name = _constant_str(node.args[0]) if node.args else None
            if called not in ("import_module", "__import__") or name is None:
                continue
            anchor = node.args[1] if called == "import_module" and len(node.args) > 1 else None
            anchor = next((k.value for k in node.keywords if k.arg == "package"), anchor)
            anchor_name = {"__name__": module, "__package__": package}.get(getattr(anchor, "id", None))
            anchor_name = anchor_name or _constant_str(anchor) or package
            level = len(name) - len(name.lstrip("."))
            # import_module(".x", pkg) resolves from pkg itself, as a package
            found.append((node.lineno, _resolve(name.lstrip("."), level, anchor_name)))
    return found


def _parts(name: str) -> list[str]:
    parts = name.split(".")
    return parts[1:] if parts[0] == PACK else parts


def imports_testing(name: str) -> bool:
    parts = _parts(name)
    return any(tuple(parts[i:i + 2]) == TESTING for i in range(len(parts) - 1))


def imports_comfyui(name: str) -> bool:
    return name.split(".")[0] in COMFYUI  # absolute names only: relative ones start with `PACK`


def production_modules(root: Path) -> list[Path]:
    """Every module of ``root``'s production code: the pack's `__init__.py`, `nodes/`, and
    `colorflow_core/` without `colorflow_core/testing/`."""
    testing = root.joinpath(*TESTING)
    core = [p for p in sorted((root / "colorflow_core").rglob("*.py")) if testing not in p.parents]
    return [root / "__init__.py", *core, *sorted((root / "nodes").rglob("*.py"))]


def violations(root: Path) -> list[str]:
    """One line per offending import statement and rule (``from .testing import x`` names both
    ``.testing`` and ``.testing.x``)."""
    bad: dict[tuple[str, str], str] = {}
    for path in production_modules(root):
        if not path.is_file():
            continue
        module, is_package = module_name(root, path)
        in_core = _parts(module)[:1] == ["colorflow_core"]
        for line, name in imported_modules(path.read_text(encoding="utf-8"), module, is_package):
            where = f"{path.relative_to(root).as_posix()}:{line}"
            if imports_testing(name):
                bad.setdefault((where, "testing"), f"{where} imports {'.'.join(_parts(name))} (tests and benchmarks only)")
            if in_core and imports_comfyui(name):
                bad.setdefault((where, "comfyui"), f"{where} imports {name}: colorflow_core must not depend on ComfyUI")
    return list(bad.values())


def test_production_code_never_imports_testing_and_the_library_never_imports_comfyui():
    assert violations(REPO_ROOT) == []


def test_the_walk_covers_the_production_code_and_skips_testing():
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in production_modules(REPO_ROOT)}
    assert {"__init__.py", "colorflow_core/engine.py", "colorflow_core/preprocess/lines.py",
            "nodes/comfy.py", "nodes/model.py"} <= modules
    assert not any(m.startswith("colorflow_core/testing/") for m in modules)
    assert (REPO_ROOT / "colorflow_core" / "testing" / "__init__.py").is_file()


def test_the_scanner_sees_the_real_comfyui_imports_of_nodes_comfy():
    # nodes/comfy.py imports ComfyUI inside try/except: the scanner must see it (it is allowed there).
    path = REPO_ROOT / "nodes" / "comfy.py"
    names = {n for _, n in imported_modules(path.read_text(encoding="utf-8"), *module_name(REPO_ROOT, path))}
    assert any(imports_comfyui(n) for n in names)


# (file the source would be in, source): each must be reported
FORBIDDEN_TESTING = [
    ("colorflow_core/engine.py", "from colorflow_core.testing import write_release"),
    ("colorflow_core/engine.py", "import colorflow_core.testing.sd as sd"),
    ("colorflow_core/engine.py", "from colorflow_core import errors, testing"),
    ("colorflow_core/engine.py", "from .testing import write_release"),
    ("colorflow_core/engine.py", "from . import testing"),
    ("colorflow_core/__init__.py", "from .testing.sd import SCALES"),
    ("colorflow_core/preprocess/lines.py", "from ..testing.preprocess import fill_random"),
    ("colorflow_core/preprocess/__init__.py", "from .. import testing"),
    ("nodes/model.py", "def load():\n    from colorflow_core.testing import write_release\n"),
    ("nodes/model.py", "from ..colorflow_core import testing"),
    ("colorflow_core/engine.py", "import importlib\nimportlib.import_module('colorflow_core.testing')"),
    ("colorflow_core/engine.py", "from importlib import import_module\nimport_module('.testing', __package__)"),
    ("colorflow_core/__init__.py", "from importlib import import_module\nimport_module('.testing.sd', __name__)"),
]
ALLOWED_TESTING = [
    ("colorflow_core/engine.py", "import torch.testing"),
    ("colorflow_core/engine.py", "from torch import testing"),
    ("colorflow_core/engine.py", "from .testing_rules import x"),
    ("colorflow_core/preprocess/lines.py", "from . import testing"),  # colorflow_core.preprocess.testing
    ("nodes/model.py", "from colorflow_core import errors"),
]


@pytest.mark.parametrize("file, source", FORBIDDEN_TESTING)
def test_an_import_of_testing_is_caught(file, source):
    names = [n for _, n in imported_modules(source, *module_name(REPO_ROOT, REPO_ROOT / file))]
    assert any(imports_testing(n) for n in names), names


@pytest.mark.parametrize("file, source", ALLOWED_TESTING)
def test_look_alikes_of_testing_are_not_reported(file, source):
    names = [n for _, n in imported_modules(source, *module_name(REPO_ROOT, REPO_ROOT / file))]
    assert not any(imports_testing(n) for n in names), names


@pytest.mark.parametrize("source", ["import comfy.model_management", "import folder_paths",
                                    "from folder_paths import get_input_directory", "from comfy import utils",
                                    "def f():\n    import comfy.utils\n", "import nodes",
                                    "import importlib\nimportlib.import_module('comfy.model_patcher')"])
def test_an_import_of_comfyui_is_caught(source):
    names = [n for _, n in imported_modules(source, *module_name(REPO_ROOT, REPO_ROOT / "colorflow_core/engine.py"))]
    assert any(imports_comfyui(n) for n in names), names


@pytest.mark.parametrize("source", ["import comfyui_helpers", "from .comfy_like import x", "from . import nodes"])
def test_look_alikes_of_comfyui_are_not_reported(source):
    names = [n for _, n in imported_modules(source, *module_name(REPO_ROOT, REPO_ROOT / "colorflow_core/engine.py"))]
    assert not any(imports_comfyui(n) for n in names), names


def test_a_bad_module_on_disk_fails_the_walk(tmp_path):
    """A pack folder with one offending module of each kind: exactly those are reported, `testing/` is not."""
    files = {
        "__init__.py": "from .nodes import NODE_CLASS_MAPPINGS\n",
        "colorflow_core/__init__.py": "",
        "colorflow_core/ok.py": "from .errors import InputError\nimport torch.testing\n",
        "colorflow_core/bad_testing.py": "def f():\n    from .testing import write_release\n",
        "colorflow_core/deep/bad_comfy.py": "import folder_paths\n",
        "colorflow_core/testing/__init__.py": "from ..errors import InputError\nimport comfy\n",
        "nodes/__init__.py": "import comfy.utils\n",  # allowed: nodes/ is the ComfyUI layer
        "nodes/bad.py": "from ..colorflow_core.testing import sd\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert sorted(f.split(" ")[0] for f in found) == ["colorflow_core/bad_testing.py:2",
                                                      "colorflow_core/deep/bad_comfy.py:1", "nodes/bad.py:1"], found


MAX_MODULE_LINES = 400  # a module that grows past this does more than one job: split it


def test_no_module_is_longer_than_a_newcomer_reads_at_once():
    long = {str(path.relative_to(REPO_ROOT)): count
            for folder in ("colorflow_core", "nodes")
            for path in sorted((REPO_ROOT / folder).rglob("*.py"))
            if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
