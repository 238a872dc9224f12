"""Generic code never asks which latent type or data set it holds: outside a type's own file and the
``shapes`` subpackage, no built-in type name is compared or looked up, and no ``isinstance`` names a
concrete latent type or data module. The hooks (latent types) and the data contract answer instead."""

from __future__ import annotations

import ast
from pathlib import Path

import kaleido

PACKAGE = Path(kaleido.__file__).parent
BUILTIN_NAMES = {"text", "box", "blob", "visual_token"}
CONCRETE = {
    "TextLatent", "BoxLatent", "BlobLatent", "VisualTokenLatent", "GroundedLatent", "ShapesTextLatent",
    "ShapesDataModule", "ImageFolderDataModule",
}  # fmt: skip
# A type's own file may name itself; the shapes data set knows the types it has ground truth for.
OWN = {"latents/text.py", "latents/box.py", "latents/blob.py", "latents/visual_token.py", "latents/geometry.py"}


def generic_files() -> list[Path]:
    return [
        path for path in sorted(PACKAGE.rglob("*.py"))
        if not path.relative_to(PACKAGE).parts[0] == "shapes" and path.relative_to(PACKAGE).as_posix() not in OWN
    ]  # fmt: skip


def switches(tree: ast.AST) -> list[str]:
    """Each place that compares with, or looks up, a built-in type name, or checks a concrete class."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                names = {v.value for v in values if isinstance(v, ast.Constant)} & BUILTIN_NAMES
                found += [f"line {node.lineno}: compares with {name!r}" for name in sorted(names)]
        elif isinstance(node, ast.Dict):
            names = {k.value for k in node.keys if isinstance(k, ast.Constant)} & BUILTIN_NAMES
            found += [f"line {node.lineno}: keys by {name!r}" for name in sorted(names)]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in BUILTIN_NAMES:
            found.append(f"line {node.lineno}: looks up {node.slice.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            classes = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} if len(node.args) > 1 else set()
            found += [f"line {node.lineno}: {node.func.id}(..., {name})" for name in sorted(classes & CONCRETE)]
    return found


def test_the_check_finds_a_switch() -> None:
    code = "if t.name == 'box': pass\nd = {'blob': 1}\nisinstance(x, (BoxLatent, int))\nx = parts['text']\n"
    assert len(switches(ast.parse(code))) == 4
    assert switches(ast.parse("if implements(t, 'draw'): t.draw(image, z)\n")) == []


def test_generic_code_never_switches_on_a_builtin_type_or_data_set() -> None:
    files = generic_files()
    assert PACKAGE / "evaluate.py" in files and PACKAGE / "callbacks.py" in files and PACKAGE / "viz.py" in files
    found = {path.relative_to(PACKAGE).as_posix(): s for path in files if (s := switches(ast.parse(path.read_text())))}
    assert found == {}
