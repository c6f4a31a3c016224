"""The package boundary: one import root, device side importable without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]

# Code that must import on a device (no torch there). Anything torch-bound lives in
# emgkey.train / emgkey.export and is excluded.
TORCH_FREE_ROOTS = ("emgkey", "firmware_sim", "edge_runtime")

_BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: this module must import without it")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _module_names(root: str) -> list[str]:
    pkg = "emgkey" if root == "emgkey" else f"emgkey.{root}"
    names = []
    for path in sorted((REPO / root).rglob("*.py")):
        rel = path.relative_to(REPO / root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join([pkg, *parts]))
    return names


def test_every_package_folder_is_declared():
    cfg = _pyproject()["tool"]["setuptools"]
    declared = set(cfg["packages"])
    mapping = cfg["package-dir"]
    for pkg, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join([pkg, *rel.parts])
            # A sub-package of a mapped folder must be listed, or the wheel silently lacks it.
            assert name in declared, f"{init.parent} is a package but {name!r} is not in pyproject packages"


def test_no_bare_top_level_modules_installed():
    names = ("train", "export", "firmware_sim", "edge_runtime", "benchmarks")
    code = f"import importlib.util as u; print([n for n in {names!r} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"bare top-level modules importable from site-packages: {out.stdout}"


def test_device_side_imports_without_torch():
    modules = [m for root in TORCH_FREE_ROOTS for m in _module_names(root)]
    assert "emgkey.charset" in modules
    code = _BLOCK_TORCH + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, f"a device-side module needs torch or fails to import:\n{out.stderr[-3000:]}"


def test_cli_help_runs_without_torch():
    code = _BLOCK_TORCH + "from emgkey.cli import build_parser; build_parser().format_help()"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
