"""Every test module has exactly one tier (tests/conftest.py TIERS), and every tier entry is a module."""

from __future__ import annotations

from .conftest import REPO, TIERS


def test_every_test_module_has_one_tier_and_every_entry_exists():
    modules = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    listed = [m for group in TIERS.values() for m in group]
    assert len(listed) == len(set(listed)), sorted(m for m in listed if listed.count(m) > 1)
    assert modules - set(listed) == set(), "test modules without a tier"
    assert set(listed) - modules == set(), "tier entries that are not test modules"


def test_a_tier_selects_its_modules_only(pytestconfig):
    markers = pytestconfig.getini("markers")
    for tier in TIERS:
        assert any(line.startswith(f"{tier}:") for line in markers), f"marker {tier!r} not registered in pyproject.toml"
