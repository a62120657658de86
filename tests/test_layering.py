"""Layering: `backends/` talks to the outside world and never pulls in the UI.

For every module under backends/: importing it in a fresh interpreter must not load
`textual` or any `console.*` module other than `console.model` (plain data); and no
import statement in backends/ names `console.*` other than `console.model`, nor
`textual`, even one that only runs later (inside a function or TYPE_CHECKING).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BACKENDS = REPO / "backends"

_CHECK = r"""
import importlib, json, sys
importlib.import_module(sys.argv[1])
bad = sorted(m for m in sys.modules
             if m == "textual" or m.startswith("textual.")
             or (m.startswith("console.") and m != "console.model"))
print(json.dumps(bad))
"""


def _modules() -> list[str]:
    names = []
    for path in sorted(BACKENDS.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue  # importing it would run the program
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _modules()


def _forbidden(module: str) -> bool:
    root = module.split(".")[0]
    if root == "textual":
        return True
    return root == "console" and module not in ("console", "console.model")


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[int, str, str]]:
    """module → (returncode, stdout, stderr) of importing it in a fresh interpreter.

    All interpreters run at once, each bounded by a deadline.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    running = {m: subprocess.Popen([sys.executable, "-c", _CHECK, m], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for m in MODULES}
    out: dict[str, tuple[int, str, str]] = {}
    deadline = time.monotonic() + 90
    for module, proc in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr += "\n(timed out)"
        out[module] = (proc.returncode, stdout, stderr)
    return out


def test_backends_modules_found() -> None:
    assert "backends.procs" in MODULES and "backends.gpu" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_import_does_not_load_ui(module: str, loaded: dict[str, tuple[int, str, str]]) -> None:
    code, stdout, stderr = loaded[module]
    assert code == 0, f"importing {module} failed:\n{stderr[-3000:]}"
    bad = json.loads(stdout.strip().splitlines()[-1])
    assert bad == [], f"importing {module} loaded {bad}"


@pytest.mark.parametrize("path", sorted(BACKENDS.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_forbidden_import_statements(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            offenders += [(node.lineno, a.name) for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _forbidden(node.module):
                offenders.append((node.lineno, node.module))
            elif node.module == "console":
                offenders += [(node.lineno, f"console.{a.name}") for a in node.names if a.name != "model"]
    assert offenders == [], f"{path.relative_to(REPO)} imports {offenders}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The runtime check does see a UI import (guards against a vacuous test)."""
    pkg = tmp_path / "layer_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import textual\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", _CHECK, "layer_probe"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "textual" in json.loads(proc.stdout.strip().splitlines()[-1])
    assert _forbidden("console.tui.app") and _forbidden("console.supervisor")
    assert not _forbidden("console.model") and not _forbidden("consolekit")
