"""No service imports another's code: what two services share lives in ``services/common``
or in the contract (``nudge.*``), so a service can change its insides without breaking a
neighbour, and each can be deployed on its own."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"


def service_packages() -> list[Path]:
    return sorted(
        p
        for p in SERVICES.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "common"
    )


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every module a file of ``package`` imports, absolute, with its line (relative imports
    resolved against ``package``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            found.append((node.lineno, base))
    return found


def foreign_imports(package: Path) -> list[str]:
    own = f"services.{package.name}"
    root = package.parent.parent  # the directory holding services/
    problems = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(root)
        dotted = ".".join(name.with_suffix("").parts[:-1])
        for line, module in imported_modules(path.read_text(), dotted):
            if not module.startswith("services.") and module != "services":
                continue
            if module == own or module.startswith((own + ".", "services.common")):
                continue
            problems.append(f"{name}:{line} imports {module}")
    return sorted(set(problems))


def test_every_service_is_found() -> None:
    names = {p.name for p in service_packages()}
    assert {"contacts", "segmentation", "campaigns", "delivery", "tracking", "triggers"} <= names
    assert "gateway" in names


def test_no_service_imports_another_services_code() -> None:
    problems = [problem for package in service_packages() for problem in foreign_imports(package)]
    assert problems == [], "share through services/common or the contract:\n" + "\n".join(problems)


def test_the_check_sees_absolute_relative_and_plain_imports(tmp_path: Path) -> None:
    """The check itself, on a copy: each way of importing a neighbour is caught."""
    package = tmp_path / "services" / "gateway" / "adapters"
    package.mkdir(parents=True)
    (package / "probe.py").write_text(
        "import services.tracking.links\n"
        "from services.campaigns.domain import paging\n"
        "from ...delivery import handlers\n"
        "from services.common import links\n"
        "from services.gateway import convert\n"
        "from .. import schemas\n"
    )
    found = "\n".join(foreign_imports(tmp_path / "services" / "gateway"))
    assert "probe.py:1 imports services.tracking.links" in found
    assert "probe.py:2 imports services.campaigns.domain" in found
    assert "probe.py:3 imports services.delivery" in found
    assert "services.common" not in found
    assert "services.gateway" not in found


# -- enum values as bare numbers ------------------------------------------------------------

ENUM_FIELDS = {"purpose", "status", "source", "kind", "state"}


def bare_enum_numbers(source: str) -> list[int]:
    """Lines comparing a field named like an enum (``request.purpose``...) with bare small
    int literals (``== 1``, ``in (1, 2, 3)``). HTTP statuses (``status == 503``) are numbers
    in their own right, not enum values, so literals of 100 and more are left alone."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {o.attr for o in operands if isinstance(o, ast.Attribute)}
            names |= {o.id for o in operands if isinstance(o, ast.Name)}
            if not names & ENUM_FIELDS:
                continue
            literals = [
                c
                for o in operands
                for c in (o.elts if isinstance(o, ast.Tuple | ast.List | ast.Set) else [o])
                if isinstance(c, ast.Constant) and type(c.value) is int and c.value < 100
            ]
            if literals:
                lines.append(node.lineno)
    return lines


def test_no_enum_is_compared_with_bare_numbers() -> None:
    """The contract's names (or the domain's mirrors of them), not ``purpose in (1, 2, 3)``:
    a number says nothing to a reader and silently changes meaning if the enum grows."""
    problems = [
        f"{path.relative_to(SERVICES.parent)}:{line}"
        for path in sorted(SERVICES.rglob("*.py"))
        for line in bare_enum_numbers(path.read_text())
    ]
    assert problems == [], "use the enum's names:\n" + "\n".join(problems)


def test_the_enum_check_sees_the_old_patterns() -> None:
    assert bare_enum_numbers("ok = request.purpose in (1, 2, 3)\n") == [1]
    assert bare_enum_numbers("x = 1\nok = request.kind != 2\n") == [2]
    assert bare_enum_numbers("ok = status == 0\n") == [1]
    assert bare_enum_numbers("ok = status == 503\n") == []
    assert bare_enum_numbers("ok = request.purpose in PURPOSES\n") == []
    assert bare_enum_numbers("ok = answer.status_code != 200\n") == []
