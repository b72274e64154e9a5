"""Where the local stack keeps its state.

Everything lives under one directory, ``$NUDGE_HOME`` or ``<repo>/.nudge`` (ignored by git,
removed by ``make clean``): downloads that are worth keeping between runs (``cache/``, the
Kafka jars), data that ``make run`` keeps between runs (``data/<part>``), and logs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """``$NUDGE_HOME`` if set, else ``<repo>/.nudge``; read at call time, for tests."""
    return Path(os.environ.get("NUDGE_HOME") or REPO_ROOT / ".nudge").resolve()


def cache_dir(base: Path | None = None) -> Path:
    return (base or state_dir()) / "cache"


def data_dir(part: str, base: Path | None = None) -> Path:
    return (base or state_dir()) / "data" / part


def logs_dir(base: Path | None = None) -> Path:
    return (base or state_dir()) / "logs"


def traces_dir(base: Path | None = None) -> Path:
    """Where ``make run``'s services write their spans as JSON lines (``NUDGE_TRACES_DIR``),
    which ``nudge trace`` reads when no Jaeger knows a trace."""
    return (base or state_dir()) / "traces"
