"""pyproject.toml stays free of setuptools deprecations (installing prints no warnings)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_license_is_an_spdx_expression_and_the_build_needs_a_setuptools_that_reads_it() -> None:
    config = tomllib.loads(PYPROJECT.read_text())
    assert config["project"]["license"] == "MIT"  # a TOML table is deprecated since setuptools 77
    (requirement,) = [r for r in config["build-system"]["requires"] if r.startswith("setuptools")]
    floor = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", requirement.replace(" ", ""))
    assert floor and int(floor[1]) >= 77, requirement  # 77.0 is the first to accept the SPDX string


def test_the_package_ships_its_type_information() -> None:
    config = tomllib.loads(PYPROJECT.read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["phaseledger"]
    assert (PYPROJECT.parent / "phaseledger" / "py.typed").is_file()
