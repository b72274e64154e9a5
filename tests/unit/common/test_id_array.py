"""``id_array``: ids and numbers as one text parameter (services/common/db.py)."""

from __future__ import annotations

import uuid

from services.common.db import id_array


def test_ids_and_numbers_become_one_comma_separated_text() -> None:
    a, b = str(uuid.uuid4()), uuid.uuid4()
    assert id_array([a, a]) == f"{a},{a}"
    assert id_array([a, b]) == f"{a},{b}"  # a UUID object reads as its text
    assert id_array(str(i) for i in range(3)) == "0,1,2"
    assert id_array([1, 20]) == "1,20"
    assert id_array([]) == ""


def test_none_is_null_not_the_text_none() -> None:
    assert id_array([3, None, 4]) == "3,NULL,4"
    assert id_array(["a", None]) == "a,NULL"
