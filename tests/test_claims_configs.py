"""The claims' comparison configs shipped in the package (src/dynamtl/cli/claims/) are valid
runs: every row of every config plans (benchmark, options, tasks, method and its options)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dynamtl.cli
from dynamtl.cli.main import COMPARE_KEYS
from dynamtl.train.config import RunConfig, plan, read_config_file
from dynamtl.train.controls import method_specs

CLAIMS = sorted((Path(dynamtl.cli.__file__).parent / "claims").glob("*.toml"))


def test_the_claims_are_shipped():
    assert len(CLAIMS) >= 9 and any(p.name == "hydalearn_drift_needed.toml" for p in CLAIMS)


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.stem)
def test_every_row_of_a_claim_config_plans(path):
    values = read_config_file(path)
    listed = {key: values.pop(key, None) for key in COMPARE_KEYS}
    assert len(listed["seeds"]) >= 3, "a claim is decided over at least 3 seeds"
    base = RunConfig.from_mapping(values, str(path))
    for spec in method_specs(base, listed["methods"], listed["variants"]):
        checked = plan(spec.config)  # ConfigError naming every problem
        for key, value in (listed["variants"] or {}).get(spec.label, {}).items():
            if key != "method":  # the variant's own options reach the method
                assert checked.config.options[key] == value, (path.name, spec.label, key)
