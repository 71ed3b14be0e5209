"""The package as installed: every module has one name, every package ships, nothing is a link."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN_CARD = ("flows", "tasks", "models", "data_contracts")


def packages_on_disk() -> set[str]:
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src" / "radcap").rglob("__init__.py")}
    for folder in DESIGN_CARD:
        found |= {".".join(("radcap", *p.parent.relative_to(ROOT).parts)) for p in (ROOT / folder).rglob("__init__.py")}
    return found


def test_every_package_on_disk_is_in_the_distribution():
    """A new room (or subpackage) left out of pyproject.toml's list would be missing from a wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    assert packages_on_disk() <= listed, sorted(packages_on_disk() - listed)
    assert {config["package-dir"][f"radcap.{folder}"] for folder in DESIGN_CARD} == set(DESIGN_CARD)


def test_no_file_in_the_repository_is_a_link():
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listed.splitlines() if line.startswith("120000")]
    assert not links


@pytest.mark.parametrize("folder", DESIGN_CARD)
def test_a_design_card_folder_has_only_its_radcap_name(folder):
    """From the repository root, `import flows` would load every flow a second time under a second name."""
    bare = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
    assert bare.returncode != 0 and f"import radcap.{folder}, not {folder}" in bare.stderr
    named = subprocess.run([sys.executable, "-c", f"import radcap.{folder}"], cwd=ROOT, capture_output=True, text=True)
    assert named.returncode == 0, named.stderr


def test_logged_model_code_names_only_a_stable_public_class():
    """What MLflow stores with each registered version is frozen there: it must not import radcap's internals,
    which move (the 0.3 rooms moved every module), only `radcap.serving.pyfunc_<kind>`."""
    import ast

    logged = sorted((ROOT / "src" / "radcap" / "serving" / "logged").glob("*.py"))
    assert {p.stem for p in logged} == {"captioner", "retriever", "encoder"}
    for path in logged:
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported == {"mlflow", f"radcap.serving.pyfunc_{path.stem}"}, (path.name, imported)
