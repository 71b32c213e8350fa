"""The STTS golden vectors, one test per case, through `stts_train.conformance.stts`.

The goldens sit in the shared folder beside the repository (`<repo>/../shared/golden/stts`).
A missing folder is a broken checkout: the test fails and says where it looked, never skips.
The comparison rules are the ones each case's JSON lists (`docs/stts.md#golden-vectors`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stts_train.conformance.common import discover_cases, load_case
from stts_train.conformance.stts import RUNNERS, run_case

STTS_GOLDENS = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "stts"
# The public set: cases per component.
PUBLIC_CASES = {"scorer": 3, "selection": 4, "soft_bias": 4, "aux_loss": 3, "vit_forward": 3}
MISSING = "goldens-missing"


def golden_dir() -> Path:
    if not (STTS_GOLDENS / "README.md").is_file():
        raise FileNotFoundError(
            f"STTS goldens not found at {STTS_GOLDENS}; the 'shared' folder must sit beside the "
            "repository root (CI checks it out there)"
        )
    return STTS_GOLDENS


def case_params() -> list:
    """One param per case; a single failing param when the folder is missing (not an empty set,
    which pytest would report as a skip)."""
    if not STTS_GOLDENS.is_dir():
        return [pytest.param(MISSING, id=MISSING)]
    paths = discover_cases(STTS_GOLDENS)
    return [pytest.param(p, id=f"{p.parent.name}/{p.stem}") for p in paths] or [
        pytest.param(MISSING, id=MISSING)
    ]


@pytest.mark.parametrize("json_path", case_params())
def test_stts_golden_case(json_path):
    if json_path == MISSING:
        golden_dir()  # raises with the location
        raise AssertionError(f"no STTS golden cases under {STTS_GOLDENS}")
    result = run_case(json_path)
    assert result.passed, str(result)
    # every rule the case lists was really checked
    assert set(result.rules) == set(load_case(json_path).compare), result.details


def test_every_public_case_is_present():
    cases = discover_cases(golden_dir())
    assert Counter(p.parent.name for p in cases) == Counter(PUBLIC_CASES)
    assert set(PUBLIC_CASES) == set(RUNNERS)
