"""The registry: every command-line name builds its class, method specs compose, options
are parsed by type and routed to the half that takes them, and bad names or options are
rejected with the valid ones listed."""

from __future__ import annotations

import inspect

import pytest
import torch

import dynamtl as dm
from dynamtl.aggregation.base import Aggregation
from dynamtl.aggregation.cagrad import CAGrad
from dynamtl.aggregation.graddrop import GradDrop
from dynamtl.benchmarks.drift import RelevanceDrift
from dynamtl.registry import (
    AGGREGATIONS,
    BENCHMARKS,
    WEIGHTINGS,
    MethodContext,
    RegistryError,
    benchmark,
    parse_method,
    parse_value,
)

AUXILIARY = MethodContext(tasks=("main", "aux", "other"), primary=("main",), auxiliary=True, seed=3)
MULTI_TASK = MethodContext(tasks=("main", "aux", "other"), primary=("main", "aux", "other"), auxiliary=False, seed=3)
REQUIRED = {"static": {"weights": "main:1,aux:0.5,other:0.25"}}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_weighting_builds_its_class_and_binds(name):
    entry = WEIGHTINGS[name]
    weighting, aggregation = parse_method(name, REQUIRED.get(name)).build(AUXILIARY)
    assert type(weighting) is entry.factory and isinstance(aggregation, dm.Sum)
    weighting.bind(AUXILIARY.tasks)
    assert set(entry.options) <= set(inspect.signature(entry.factory.__init__).parameters)


@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_every_aggregation_builds_its_class_with_equal_weighting(name):
    weighting, aggregation = parse_method(name).build(MULTI_TASK)
    assert type(aggregation) is AGGREGATIONS[name].factory and isinstance(aggregation, Aggregation)
    assert type(weighting) is dm.Equal


def test_names_are_unique_across_weightings_and_aggregations():
    assert not set(WEIGHTINGS) & set(AGGREGATIONS)


def test_a_composed_spec_routes_each_option_to_the_half_that_takes_it():
    spec = parse_method("auto-lambda+cagrad", {"lr": "3e-4", "c": "0.2", "order": "lagged"})
    weighting, aggregation = spec.build(AUXILIARY)
    assert isinstance(weighting, dm.AutoLambda) and isinstance(aggregation, CAGrad)
    assert weighting.lr == 3e-4 and weighting.order == "lagged" and aggregation.c == 0.2
    assert spec.name == "auto-lambda+cagrad"
    assert spec.options == {"lr": 3e-4, "order": "lagged", "c": 0.2}


def test_the_context_fills_each_class_own_parameters():
    auto_lambda, _ = parse_method("auto-lambda").build(AUXILIARY)
    hydalearn, _ = parse_method("hydalearn").build(AUXILIARY)
    gcs, _ = parse_method("gcs").build(AUXILIARY)
    assert auto_lambda.primary_names == ["main"]
    assert hydalearn.main_names == ["main"] and gcs.main_names == ["main"]
    rlw, _ = parse_method("rlw").build(AUXILIARY)
    reference = dm.RLW(seed=AUXILIARY.seed).bind(AUXILIARY.tasks)
    rlw.bind(AUXILIARY.tasks)
    assert torch.equal(rlw.loss_weights(torch.ones(3)), reference.loss_weights(torch.ones(3)))


def test_canonical_names_drop_the_default_half():
    assert parse_method("equal+pcgrad").name == "pcgrad"
    assert parse_method("dwa+sum").name == "dwa"


@pytest.mark.parametrize(
    ("spec", "options", "expected"),
    [
        ("nope", {}, "unknown method 'nope'; valid names: equal, dwa"),
        ("cagrad+auto-lambda", {}, "unknown weighting 'cagrad'; valid names: equal"),
        ("auto-lambda+dwa", {}, "unknown aggregation 'dwa'; valid names: sum, aligned-mtl"),
        ("a+b+c", {}, "must be WEIGHTING, AGGREGATION or WEIGHTING+AGGREGATION"),
        ("stl+pcgrad", {}, "'stl' trains one model per task and takes no aggregation"),
        ("auto-lambda", {"c": "1"}, "no part of the method takes option 'c'; accepted options — auto-lambda: init, lr"),
        ("auto-lambda", {"lr": "fast"}, "option 'lr' of 'auto-lambda' expects a number, got 'fast'"),
        ("auto-lambda", {"order": "later"}, "option 'order' of 'auto-lambda' must be one of ['lookahead', 'lagged']"),
        ("ol-aux", {"interval": "2.5"}, "option 'interval' of 'ol-aux' expects an integer"),
        ("cagrad", {"rescale": "maybe"}, "option 'rescale' of 'cagrad' expects true or false"),
        ("auto-lambda+cagrad", {"pcgrad.c": "1"}, "qualified with 'pcgrad', which is not part of this method"),
        ("static", {}, "method 'static' needs the option(s) ['weights']"),
    ],
)
def test_bad_specs_and_options_name_the_valid_ones(spec, options, expected):
    with pytest.raises(RegistryError, match=None) as error:
        parse_method(spec, options)
    assert expected in str(error.value)


def test_an_option_taken_by_both_halves_must_be_qualified():
    with pytest.raises(
        RegistryError, match=r"option 'beta' is accepted by both 'ol-aux' and 'gradvac': write ol-aux\.beta"
    ):
        parse_method("ol-aux+gradvac", {"beta": "0.5"})
    spec = parse_method("ol-aux+gradvac", {"gradvac.beta": "0.5", "ol-aux.beta": "2", "interval": "3"})
    assert spec.aggregation_options == {"beta": 0.5} and spec.weighting_options == {"beta": 2.0, "interval": 3}
    assert spec.options == {"ol-aux.beta": 2.0, "interval": 3, "gradvac.beta": 0.5}
    assert spec.takes("gradvac.beta") and spec.takes("interval") and not spec.takes("gradvac.interval")


def test_auxiliary_methods_refuse_multi_task_mode_and_say_how_to_fix_it():
    expected = "weighs auxiliary tasks against primary ones: run it with --mode auxiliary"
    with pytest.raises(RegistryError, match=expected):
        parse_method("gcs").build(MULTI_TASK)


def test_constructor_errors_are_reported_with_the_method_name():
    with pytest.raises(RegistryError, match=r"cannot build 'dwa': DWA's option temperature must be > 0 and finite, "
                                            r"got -1\.0"):
        parse_method("dwa", {"temperature": "-1"}).build(MULTI_TASK)


def test_values_parse_by_type_hint_from_strings_and_from_typed_files():
    graddrop = parse_method("graddrop", {"leak": "0.1,0.2,0.3"}).aggregation_options
    assert graddrop == {"leak": [0.1, 0.2, 0.3]}
    assert parse_method("graddrop", {"leak": 0.5}).aggregation_options == {"leak": 0.5}
    assert parse_method("gradnorm", {"layer": "trunk.0.weight"}).weighting_options == {"layer": "trunk.0.weight"}
    assert parse_method("gradnorm", {"layer": "a,b"}).weighting_options == {"layer": ["a", "b"]}
    assert parse_method("hydalearn", {"step_size": "none"}).weighting_options == {"step_size": None}
    assert parse_method("famo", {"min_losses": {"main": 0}}).weighting_options == {"min_losses": {"main": 0.0}}
    assert parse_value("a:1,b:0.5", dict[str, float], "x") == {"a": 1.0, "b": 0.5}
    assert parse_value(3, float, "x") == 3.0 and parse_value("yes", bool, "x") is True
    with pytest.raises(RegistryError, match=r"x expects an integer, got 3\.0"):
        parse_value(3.0, int, "x")
    with pytest.raises(RegistryError, match="x expects key:value pairs"):
        parse_value("a=1", dict[str, float], "x")


def test_benchmarks_are_built_by_name_with_their_constructor_options():
    drift = benchmark("drift", {"cycles": "2", "features": 4})
    assert isinstance(drift, RelevanceDrift) and drift.cycles == 2.0 and drift.features == 4
    for name in BENCHMARKS:
        assert benchmark(name).name == name
    with pytest.raises(RegistryError, match="unknown benchmark 'mnist'; valid benchmarks: census, drift"):
        benchmark("mnist")
    with pytest.raises(RegistryError, match="benchmark 'drift' takes no option 'depth'; it accepts: features, "):
        benchmark("drift", {"depth": 3})
    with pytest.raises(RegistryError, match="cannot build benchmark 'drift': cycles must be > 0"):
        benchmark("drift", {"cycles": 0})


def test_graddrop_leak_reaches_the_class():
    _, aggregation = parse_method("graddrop", {"leak": "0.25"}).build(MULTI_TASK)
    assert isinstance(aggregation, GradDrop) and aggregation.leak == 0.25


@pytest.mark.parametrize(("option", "text", "reads"), [("mu", "1e-400", "0.0"), ("mu", "-2e999", "-inf"),
                                                       ("ideal", "main:1e400", "inf")])
def test_a_number_beyond_a_floats_range_is_refused_as_written_not_as_rounded(option, text, reads):
    """'1e-400' read as 0.0 was refused as 'got 0.0' (which the user never wrote), '1e400' as inf."""
    with pytest.raises(RegistryError, match=rf"option '{option}' of 'stch' expects a number within a float's range "
                                            rf".*which would read as {reads}"):
        parse_method("stch", {option: text})
    assert parse_method("stch", {"mu": "0e5", "ideal": "main:-0.000"}).weighting_options["mu"] == 0.0
    assert parse_method("stch", {"mu": "1e-310"}).weighting_options["mu"] == 1e-310  # subnormal, not zero
