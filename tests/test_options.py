"""Option objects (``gradparity.core.options``): every option given in an object gives the report
its keyword argument gives; a value given both ways, a field the entry point does not take and
an object of the wrong type are refused in one line; objects are checked when built, by the
same rules and words as the keyword arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from textbook_setup import HIDDEN_DERIVATIVE, setup

import gradparity as gp
from gradparity.ours import SGD, mlp
from gradparity.reference import mirror


def _layered(seed: int = 0):
    model = mlp((5, 4, 3), seed=seed)
    rng = np.random.default_rng(seed)
    return model, mirror(model), rng.standard_normal((6, 5)), rng.integers(0, 3, size=6)


def _batches(n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 5)), rng.integers(0, 3, size=8)) for _ in range(n)]


def _summed_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target.long(), reduction="sum")


def _message(call) -> str:
    with pytest.raises(gp.InputError) as caught:
        call()
    return str(caught.value)


def test_the_option_objects_are_public_frozen_and_documented():
    for name in ("Tolerances", "ReferenceInputs", "Maps", "TrainingOptions"):
        kind = getattr(gp, name)
        assert name in gp.__all__ and dataclasses.is_dataclass(kind) and kind.__doc__
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(kind(), next(iter(kind.KEYWORDS)), 1)


def test_the_options_module_does_not_import_torch():
    code = "import sys, gradparity.core.options; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mutant", [None, HIDDEN_DERIVATIVE], ids=["correct", "mutant"])
def test_compare_function_options_in_objects_give_the_keyword_report(mutant):
    given = setup(mutant) if mutant else setup()
    keywords = gp.compare_function(**given, param_map={"w[0]": "0.weight"}, rtol=1e-6, atol=0.0)
    grouped = {k: v for k, v in given.items() if not k.startswith(("reference_", "tap_map"))}
    objects = gp.compare_function(
        **grouped,
        reference_inputs=gp.ReferenceInputs(
            x=given["reference_x"], target=given["reference_target"], loss=given["reference_loss"]
        ),
        maps=gp.Maps(param_map={"w[0]": "0.weight"}, tap_map=given["tap_map"]),
        tolerances=gp.Tolerances(rtol=1e-6, atol=0.0),
    )
    assert objects.to_json() == keywords.to_json()
    assert objects.tolerance.rtol == 1e-6 and objects.ok == (mutant is None)


def test_options_split_between_keywords_and_objects_give_the_same_report():
    given = setup(HIDDEN_DERIVATIVE)
    mixed = dict(given)
    tap_map = mixed.pop("tap_map")
    report = gp.compare_function(**mixed, maps=gp.Maps(tap_map=tap_map), rtol=1e-6)
    assert report.to_json() == gp.compare_function(**given, rtol=1e-6).to_json()


def test_compare_options_in_objects_give_the_keyword_report():
    model, ref, x, y = _layered()
    layer_map = {"fc1": "fc1", "act1": "act1", "fc2": "fc2"}
    keywords = gp.compare(
        model,
        ref,
        x,
        y,
        reference_loss=_summed_cross_entropy,
        layer_map=layer_map,
        rtol=1e-6,
        atol=1e-10,
    )
    objects = gp.compare(
        model,
        ref,
        x,
        y,
        reference_inputs=gp.ReferenceInputs(loss=_summed_cross_entropy),
        maps=gp.Maps(layer_map=layer_map),
        tolerances=gp.Tolerances(rtol=1e-6, atol=1e-10),
    )
    assert objects.to_json() == keywords.to_json()
    assert objects.tolerance.atol == 1e-10


def test_compare_training_options_in_objects_give_the_keyword_report():
    model, ref, _, _ = _layered()
    val = (np.random.default_rng(2).standard_normal((10, 5)), np.arange(10) % 3)
    seen: list[int] = []

    def progress(batches):
        seen.append(1)
        return batches

    def ours_opt(m):
        return SGD(m, lr=0.05)

    def ref_opt(p):
        return torch.optim.SGD(p, lr=0.05)

    common = {"layer_map": {"fc1": "fc1", "act1": "act1", "fc2": "fc2"}, "rtol": 1e-6}
    keywords = gp.compare_training(
        model, ref, _batches(4), reference_loss=_summed_cross_entropy, ours_optimizer=ours_opt,
        reference_optimizer=ref_opt, steps=3, validation=val, eval_every=2,
        progress=progress, **common,
    )  # fmt: skip
    objects = gp.compare_training(
        model,
        ref,
        _batches(4),
        reference_inputs=gp.ReferenceInputs(loss=_summed_cross_entropy),
        maps=gp.Maps(layer_map=common["layer_map"]),
        tolerances=gp.Tolerances(rtol=1e-6),
        training=gp.TrainingOptions(
            ours_optimizer=ours_opt, reference_optimizer=ref_opt, steps=3, validation=val,
            eval_every=2, progress=progress,
        ),
    )  # fmt: skip
    assert objects.to_json() == keywords.to_json()
    assert len(objects.history) == 3 and seen == [1, 1]
    assert list(objects.history.dropna(subset=["val_acc_ours"]).step) == [1, 2, 3]


def test_the_same_tolerances_object_serves_every_entry_point():
    tight = gp.Tolerances(rtol=1e-9)
    model, ref, x, y = _layered()
    assert gp.compare(model, ref, x, y, tolerances=tight).tolerance.rtol == 1e-9
    assert gp.compare_function(**setup(), tolerances=tight).tolerance.rtol == 1e-9
    training = gp.compare_training(model, ref, _batches(1), tolerances=tight)
    assert training.tolerance.rtol == 1e-9


def test_options_pass_through_the_assertions():
    model, ref, x, y = _layered()
    report = gp.assert_parity(model, ref, x, y, tolerances=gp.Tolerances(rtol=1e-6))
    assert report.tolerance.rtol == 1e-6
    given = setup()
    tap_map = given.pop("tap_map")
    report = gp.assert_function_parity(**given, maps=gp.Maps(tap_map=tap_map))
    assert len([r for r in report.rows if r.type == "tap"]) == 9


@pytest.mark.parametrize(
    ("keyword", "group"),
    [
        ({"rtol": 1e-6}, {"tolerances": gp.Tolerances(rtol=1e-5)}),
        ({"atol": 0.0}, {"tolerances": gp.Tolerances(atol=0.0)}),  # also the same value
        (
            {"reference_loss": _summed_cross_entropy},
            {"reference_inputs": gp.ReferenceInputs(loss=_summed_cross_entropy)},
        ),
        ({"layer_map": {"fc1": "fc1"}}, {"maps": gp.Maps(layer_map={"fc1": "fc1"})}),
    ],
)
def test_compare_refuses_a_value_given_both_ways(keyword, group):
    model, ref, x, y = _layered()
    name = next(iter(keyword))
    message = _message(lambda: gp.compare(model, ref, x, y, **keyword, **group))
    assert message == (
        f"{name} is given twice, as {name}= and in {next(iter(group))}="
        f"{type(next(iter(group.values()))).__name__}(...); give it once"
    )


def test_a_value_given_positionally_and_in_an_object_is_refused():
    model, ref, x, y = _layered()
    maps = gp.Maps(layer_map={"fc1": "fc1"})
    message = _message(lambda: gp.compare(model, ref, x, y, None, None, {"fc2": "fc2"}, maps=maps))
    assert message.startswith("layer_map is given twice")


def test_a_keyword_passed_as_none_gives_way_to_the_object():
    model, ref, x, y = _layered()
    report = gp.compare(model, ref, x, y, rtol=None, tolerances=gp.Tolerances(rtol=1e-6))
    assert report.tolerance.rtol == 1e-6


def test_a_keyword_passed_at_its_default_value_still_counts_as_given():
    model, ref, _, _ = _layered()
    message = _message(
        lambda: gp.compare_training(
            model, ref, _batches(1), eval_every=10, training=gp.TrainingOptions(eval_every=5)
        )
    )
    assert message.startswith("eval_every is given twice, as eval_every= and in training=")


def test_compare_function_refuses_a_value_given_both_ways():
    given = setup()
    message = _message(
        lambda: gp.compare_function(**given, reference_inputs=gp.ReferenceInputs(x=given["x"].T))
    )
    assert message.startswith("reference_x is given twice")
    message = _message(lambda: gp.compare_function(**given, maps=gp.Maps(tap_map={})))
    assert message.startswith("tap_map is given twice")


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ({"maps": gp.Maps(tap_map={"t": "fc1"})}, "compare takes no tap_map; leave Maps.tap_map"),
        (
            {"reference_inputs": gp.ReferenceInputs(x=np.zeros((6, 5)))},
            "compare takes no reference_x; leave ReferenceInputs.x unset",
        ),
        ({"tolerances": 1e-6}, "tolerances must be a gradparity.Tolerances(...), got float"),
        ({"maps": {"fc1": "fc1"}}, "maps must be a gradparity.Maps(...), got dict"),
    ],
)
def test_compare_refuses_what_it_does_not_take(group, expected):
    model, ref, x, y = _layered()
    assert _message(lambda: gp.compare(model, ref, x, y, **group)).startswith(expected)


def test_compare_function_refuses_a_layer_map_and_compare_no_training_options():
    message = _message(lambda: gp.compare_function(**setup(), maps=gp.Maps(layer_map={"a": "b"})))
    assert message == "compare_function takes no layer_map; leave Maps.layer_map unset"
    model, ref, x, y = _layered()
    with pytest.raises(TypeError, match="training"):  # Python's own error, as for any keyword
        gp.compare(model, ref, x, y, training=gp.TrainingOptions(steps=2))


def test_a_call_that_does_not_fit_the_signature_keeps_pythons_error():
    model, ref, x, _ = _layered()
    with pytest.raises(TypeError, match="target"):
        gp.compare(model, ref, x)


@pytest.mark.parametrize(
    ("build", "keyword"),
    [
        (lambda: gp.Tolerances(rtol=-1.0), {"rtol": -1.0}),
        (lambda: gp.Tolerances(atol=float("nan")), {"atol": float("nan")}),
        (lambda: gp.Tolerances(rtol="1e-7"), {"rtol": "1e-7"}),
        (lambda: gp.Maps(layer_map={"fc1": 1}), {"layer_map": {"fc1": 1}}),
        (lambda: gp.Maps(layer_map=["fc1"]), {"layer_map": ["fc1"]}),
        (lambda: gp.ReferenceInputs(loss="mse"), {"reference_loss": "mse"}),
    ],
)
def test_objects_are_checked_when_built_with_the_keywords_words(build, keyword):
    model, ref, x, y = _layered()
    assert _message(build) == _message(lambda: gp.compare(model, ref, x, y, **keyword))


@pytest.mark.parametrize(
    ("build", "keyword"),
    [
        (lambda: gp.TrainingOptions(steps=0), {"steps": 0}),
        (lambda: gp.TrainingOptions(eval_every=1.5), {"eval_every": 1.5}),
        (lambda: gp.TrainingOptions(progress=3), {"progress": 3}),
    ],
)
def test_training_options_are_checked_when_built_with_the_keywords_words(build, keyword):
    model, ref, _, _ = _layered()
    expected = _message(lambda: gp.compare_training(model, ref, _batches(1), **keyword))
    assert _message(build) == expected


def test_maps_of_the_function_entry_point_are_checked_when_built():
    expected = _message(lambda: gp.compare_function(**{**setup(), "tap_map": {"a": 1}}))
    assert _message(lambda: gp.Maps(tap_map={"a": 1})) == expected
    expected = _message(lambda: gp.compare_function(**setup(), param_map={"w[0]": None}))
    assert _message(lambda: gp.Maps(param_map={"w[0]": None})) == expected


def test_objects_keep_plain_copies_of_what_they_were_given():
    layer_map = {"fc1": "fc1"}
    maps = gp.Maps(layer_map=layer_map)
    layer_map["fc2"] = "fc2"  # a later change of the caller's dict does not reach the object
    assert maps.layer_map == {"fc1": "fc1"}
    assert gp.Tolerances(rtol=np.float32(0.5)).rtol == 0.5
    assert type(gp.TrainingOptions(steps=np.int64(3)).steps) is int


def test_the_readme_option_example_runs_as_the_keywords_would():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**Option objects.**") :]
    start = section.index("```python\n") + 10
    example = section[start : section.index("```\n", start)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    assert out.getvalue() == "1e-09 True\n"
