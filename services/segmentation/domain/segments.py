"""Order statuses, calendar arithmetic, and the built-in segments (re-exported).

The built-in segments used to be Python predicates here with SQL twins; they are now rule
documents (:mod:`services.segmentation.domain.builtins`) run by the one evaluator
(:mod:`services.segmentation.domain.evaluate`) and the one compiler
(:mod:`services.segmentation.adapters.rule_sql`). The names stay importable from here.
"""

from __future__ import annotations

from enum import StrEnum

from services.segmentation.domain.builtins import BUILT_IN, BY_ID, BuiltIn
from services.segmentation.domain.evaluate import days_before, months_before


class OrderStatus(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


BuiltInSegment = BuiltIn

__all__ = [
    "BUILT_IN",
    "BY_ID",
    "BuiltIn",
    "BuiltInSegment",
    "OrderStatus",
    "days_before",
    "months_before",
]
