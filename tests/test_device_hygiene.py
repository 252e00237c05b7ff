"""Lint: every tensor the library creates says where it lives.

A tensor factory call in ``avmem/`` (``torch.tensor``, ``zeros``, ``ones``, ``full``, ``arange``, ``empty``,
``rand``, ``randn``, ``randint``, ``linspace``, ``eye``) must pass ``device=`` (a deliberate host tensor says
``device="cpu"``; ``*_like`` and ``Tensor.new_*`` inherit the device and are fine), and ``torch.from_numpy(...)``
must be followed at once by ``.to(...)``. A tensor made inside ``nn.Parameter(...)`` or in the constructor
(``__init__``) of an ``nn.Module`` subclass is exempt: initial parameters follow the default device (``with torch.device(...)``, e.g. the ``meta`` builds of the
presets) and move with ``.to()``. Code made on the CPU meets CUDA tensors otherwise (issue 12).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "avmem"
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "arange", "empty", "rand", "randn", "randint", "linspace",
             "eye"}
DTYPES = {"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32", "int64",
          "long", "int", "uint8", "bool"}

# Files allowed a number of violations while they are being fixed (none now). The counts only shrink: the test
# fails when a file gains a violation or when it has fewer than listed (then lower the count).
NOT_YET_FIXED: dict[str, int] = {}


def violations(source: str) -> list[tuple[int, str]]:
    """(line, what) of every factory call without ``device=`` and every ``from_numpy`` not moved at once."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            continue
        if in_module_constructor(node, parents):
            continue
        name = node.func.attr
        if name in FACTORIES and not any(k.arg == "device" for k in node.keywords):
            found.append((node.lineno, f"torch.{name}(...) without device="))
        elif name == "from_numpy":
            up = parents.get(node)
            call = parents.get(up)
            moved = isinstance(up, ast.Attribute) and up.attr == "to" and isinstance(call, ast.Call) \
                and not _dtype_only(call)
            if not moved:
                found.append((node.lineno, "torch.from_numpy(...) not followed by .to(device)"))
    return found


def _dtype_only(call: ast.Call) -> bool:
    """``.to(torch.<dtype>)`` (or ``.to(dtype=...)``) alone: the tensor stays where it is."""
    if any(k.arg == "device" for k in call.keywords):
        return False
    first = call.args[0] if call.args else None
    if first is None:
        return True
    return isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "torch" \
        and first.attr in DTYPES


def in_module_constructor(node: ast.AST, parents: dict) -> bool:
    """Whether ``node`` lies inside ``nn.Parameter(...)`` or in the ``__init__`` of a class with a base named
    ``Module`` (``nn.Module``)."""
    up = parents.get(node)
    while up is not None:
        if isinstance(up, ast.Call) and getattr(up.func, "attr", getattr(up.func, "id", None)) == "Parameter":
            return True
        up = parents.get(up)
    up = parents.get(node)
    while up is not None and not (isinstance(up, ast.FunctionDef) and up.name == "__init__"):
        up = parents.get(up)
    cls = parents.get(up) if up is not None else None
    if not isinstance(cls, ast.ClassDef):
        return False
    names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in cls.bases}
    return "Module" in names


def package_violations() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = violations(path.read_text())
        if found:
            out[path.relative_to(PACKAGE).as_posix()] = found
    return out


def test_the_lint_catches_what_it_should():
    bad = ("import torch\nx = torch.zeros(3)\ny = torch.tensor([1], dtype=torch.long)\n"
           "z = torch.from_numpy(a)\nw = torch.from_numpy(a).float()\nv = torch.from_numpy(a).to(torch.float32)\n"
           "u = torch.as_tensor(a)\n")
    assert sorted(line for line, _ in violations(bad)) == [2, 3, 4, 5, 6, 7]
    good = ("import torch\nx = torch.zeros(3, device=d)\ny = torch.tensor([1], device='cpu')\n"
            "z = torch.from_numpy(a).to(d)\nw = torch.zeros_like(x)\nv = x.new_zeros(2)\n")
    assert violations(good) == []
    module = ("import torch\nfrom torch import nn\nclass M(nn.Module):\n    def __init__(self):\n"
              "        self.a = nn.Parameter(torch.ones(3))\n    def forward(self):\n        return torch.ones(3)\n"
              "class S:\n    def __init__(self):\n        self.a = torch.ones(3)\n        self.b = nn.Parameter(torch.ones(2))\n")
    assert [line for line, _ in violations(module)] == [7, 10]


def test_every_tensor_factory_in_the_package_names_its_device():
    found = package_violations()
    wrong = {f: v for f, v in found.items() if len(v) > NOT_YET_FIXED.get(f, 0)}
    report = "\n".join(f"avmem/{f}:{line}: {what}" for f, v in wrong.items() for line, what in sorted(v))
    assert not wrong, f"tensor factories without a device:\n{report}"
    fewer = {f: len(found.get(f, [])) for f, n in NOT_YET_FIXED.items() if len(found.get(f, [])) < n}
    assert not fewer, f"fixed: lower these counts in NOT_YET_FIXED (remove a file at 0): {fewer}"
