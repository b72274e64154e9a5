"""The committed generated code must be what `make proto` produces from proto/ today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
BIN = Path(sys.executable).parent


def generate(into: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={into}",
            f"--grpc_python_out={into}",
            f"--mypy_out={into}",
            f"--mypy_grpc_out={into}",
            *protos,
        ],
        check=True,
        cwd=PROTO,
    )


def generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = generated_files(tmp_path)
    committed = generated_files(PROTO)
    assert committed == fresh, "run `make proto`: generated files differ from proto/"
    stale = [
        str(p) for p in sorted(fresh) if not filecmp.cmp(tmp_path / p, PROTO / p, shallow=False)
    ]
    assert stale == [], f"run `make proto`: stale generated code {stale}"


@pytest.mark.parametrize("proto", sorted(PROTO.rglob("*.proto")), ids=lambda p: p.stem)
def test_every_contract_follows_the_naming_rules(proto: Path) -> None:
    text = proto.read_text()
    area = proto.parent.parent.name
    assert f"package nudge.{area}.v1;" in text
    for line in text.splitlines():
        if line.strip().startswith("enum "):
            name = line.split()[1]
            # The zero value of every enum is <ENUM>_UNSPECIFIED.
            snake = "".join(f"_{c}" if c.isupper() else c for c in name).lstrip("_").upper()
            assert f"{snake}_UNSPECIFIED = 0;" in text, f"{name} needs {snake}_UNSPECIFIED = 0"
