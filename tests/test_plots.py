"""Report figures: every function returns a PNG for real and synthetic reports, error ratios
are right, odd inputs (0-D to 3-D, differing shapes, NaN/inf) render, and pyplot stays out."""

from __future__ import annotations

import math
import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest

from gradparity.core.row import Row
from gradparity.corpus import layer_bugs as bugs
from gradparity.corpus.selftest import compare_setup
from gradparity.report import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, from the IHDR chunk."""
    assert png.startswith(PNG)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _report(bug: str | None):
    setup = bugs.base_network(0) if bug is None else next(b for b in bugs.BUGS if b.name == bug)
    return compare_setup(*(setup if bug is None else setup.build(0)))


@pytest.fixture(scope="module")
def reports():
    return {name: _report(name) for name in (None, "bias_not_summed", "bias_grad_sign")}


def _row(mode="chain", layer="fc1", quantity="output", status="ok", **values) -> Row:
    return Row(mode, layer, "Linear", quantity, [2, 3], [2, 3], status=status, **values)


def test_error_ratio_is_worst_error_over_allowed():
    row = _row(max_abs=3e-6, ours_at_worst=1.5, ref_at_worst=1.5 - 2e-6, allowed_at_worst=4e-7)
    assert row.error_ratio() == pytest.approx(5.0)
    exact = _row(max_abs=0.0, ours_at_worst=0.25, ref_at_worst=0.25, allowed_at_worst=1e-8)
    assert exact.error_ratio() == 0.0


def test_error_ratio_edge_cases():
    assert _row(status="diverged").error_ratio() is None  # shape mismatch, raised, missing
    nan = _row(max_abs=math.inf, ours_at_worst=math.nan, ref_at_worst=1.0, allowed_at_worst=1e-7)
    assert nan.error_ratio() == math.inf
    same_inf = _row(max_abs=0.0, ours_at_worst=math.inf, ref_at_worst=math.inf, allowed_at_worst=1)
    assert same_inf.error_ratio() == 0.0
    assert _row(max_abs=0.0).error_ratio() == 0.0  # empty tensor: no worst element


def test_error_ratio_on_a_real_sign_flip(reports):
    rows = reports["bias_grad_sign"].rows
    root = next(r for r in rows if r.mode == "isolate" and r.status == "root_cause")
    assert (root.layer, root.quantity) == ("fc1", "grad:b")
    # A sign flip doubles the value: error 2|r| against rtol (|r| + max|r|) + atol.
    assert root.error_ratio() == pytest.approx(abs(2 * root.ref_at_worst) / root.allowed_at_worst)
    assert root.error_ratio() > 1
    assert all(r.error_ratio() < 1 for r in rows if r.status == "ok")


def test_layer_order_is_forward_with_loss_last(reports):
    assert plots.layer_order(reports[None].rows) == ["fc1", "act1", "fc2", "loss"]
    # A chain run that stopped early: the missing layers come from the isolate rows.
    rows = [
        _row("isolate", "loss", "grad_input"),
        _row("isolate", "a"),
        _row("isolate", "b"),
        _row("isolate", "loss"),
        _row("chain", "a"),
    ]
    assert plots.layer_order(rows) == ["a", "b", "loss"]


@pytest.mark.parametrize("bug", [None, "bias_not_summed", "bias_grad_sign"])
def test_error_chart_of_real_reports(reports, bug):
    png = plots.error_chart(reports[bug].rows, title=f"{bug}: error per layer")
    width, height = _size(png)
    assert width > 600 and height > 400


def test_bias_not_summed_root_cause_has_no_ratio(reports):
    rows = reports["bias_not_summed"].rows
    roots = [r for r in rows if r.status == "root_cause"]
    assert roots and all(r.error_ratio() is None for r in roots)
    points = plots._worst_per_point(rows)
    _, novalue, is_root = points[("isolate", "backward", "fc2")]
    assert novalue and is_root
    assert points[("isolate", "forward", "fc2")][1:] == [False, False]


def _synthetic_rows(n_layers: int) -> list[Row]:
    """Isolate then chain rows of a deep network with a broken output at 3/5 of its depth, a
    shape mismatch (grad:b) at 4/5 and exact matches (ratio 0) in every other gradient."""
    rng = np.random.default_rng(0)
    broken, mismatch = n_layers * 3 // 5, n_layers * 4 // 5
    rows = []
    for mode in ("isolate", "chain"):
        fwd, bwd = [], []
        for i in range(n_layers):
            err = 10.0 ** rng.uniform(-16, -9)
            status = "ok"
            if i == broken:
                err, status = 1e-3, "root_cause"
            elif mode == "chain" and i > broken:
                err, status = 1e-3, "inherited"
            fwd.append(
                _row(
                    mode,
                    f"layer{i}",
                    max_abs=err,
                    ours_at_worst=1 + err,
                    ref_at_worst=1.0,
                    allowed_at_worst=1e-7,
                    status=status,
                )
            )
            grad = _row(
                mode,
                f"layer{i}",
                "grad:W",
                max_abs=0.0,
                ours_at_worst=2.0,
                ref_at_worst=2.0,
                allowed_at_worst=1e-7,
            )
            bias = (
                Row(mode, f"layer{i}", "Linear", "grad:b", [8, 3], [3], status="root_cause")
                if i == mismatch
                else _row(
                    mode,
                    f"layer{i}",
                    "grad:b",
                    max_abs=0.0,
                    ours_at_worst=0.0,
                    ref_at_worst=0.0,
                    allowed_at_worst=1e-12,
                )
            )
            bwd = [grad, bias, *bwd]
        rows += [*fwd, _row(mode, "loss", "output", max_abs=0.0), *bwd]
    return rows


def test_error_chart_of_1500_rows_thins_its_labels():
    """Drawing time is a benchmark figure (benchmarks/report_speed.py saves a 1000-layer report,
    this chart included), not a test assertion: a shared CPU makes any limit flaky."""
    rows = _synthetic_rows(500)  # 500 layers x 3 quantities x 2 modes
    assert len(rows) >= 1500
    points = plots._worst_per_point(rows)
    assert points[("isolate", "forward", "layer300")] == [pytest.approx(1e4), False, True]
    assert points[("isolate", "backward", "layer400")][1:] == [True, True]
    png = plots.error_chart(rows, title="deep network")
    width, _ = _size(png)
    assert width < 2500  # thinned labels keep the figure a sane size


def test_error_chart_ticks_thin_out_but_keep_root_causes():
    step, ticks = plots._ticks(1500, {700, 701})
    assert step == math.ceil(1500 / plots.THINNED_LABELS)
    assert {700, 701} <= set(ticks) and len(ticks) <= plots.THINNED_LABELS + 2
    assert plots._ticks(60, set()) == (1, list(range(60)))


def test_error_chart_with_every_layer_a_root_cause():
    rows = [
        _row(
            "isolate",
            f"layer{i}",
            max_abs=1.0,
            ours_at_worst=1.0,
            ref_at_worst=0.0,
            allowed_at_worst=1e-7,
            status="root_cause",
        )
        for i in range(300)
    ]
    assert _size(plots.error_chart(rows))[0] < 2500


def test_error_chart_of_nothing_and_of_raised_rows():
    assert _size(plots.error_chart([]))[0] > 0
    raised = Row(
        "isolate", "fc1", "Linear", "output", None, None, status="root_cause", diagnosis="raised"
    )
    nan = _row(
        "isolate",
        "fc2",
        max_abs=math.inf,
        ours_at_worst=math.nan,
        ref_at_worst=1.0,
        allowed_at_worst=1e-7,
        status="root_cause",
    )
    rows = [raised, nan, _row("isolate", "loss", "output", max_abs=0.0)]
    assert plots.layer_order(rows) == ["fc1", "fc2", "loss"]
    points = plots._worst_per_point(rows)
    assert points[("isolate", "forward", "fc1")] == [0.0, True, True]  # no value: drawn as x
    assert points[("isolate", "forward", "fc2")] == [math.inf, False, True]  # drawn at the top
    assert _size(plots.error_chart(rows))[0] > 600


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (np.float64(1.5), np.float64(1.5 + 1e-3)),
        (np.arange(5.0), -np.arange(5.0)),
        (np.ones((8, 3)), np.ones((8, 3))),  # constant and identical: flat colour range
        (np.random.default_rng(0).standard_normal((4, 3, 5)), np.zeros((4, 3, 5))),
        (np.ones((8, 3)), np.ones(3)),  # bias not summed: the difference panel says so
        (np.zeros((0, 3)), np.zeros((0, 3))),
    ],
    ids=["0d", "1d", "2d-constant", "3d", "shapes-differ", "empty"],
)
def test_heatmaps_of_any_shape(ours, reference):
    assert _size(plots.heatmaps("fc2 grad:b [not_reduced]", ours, reference))[0] > 1000


def _magenta_pixels(png: bytes) -> int:
    """Pixels of the colour that marks non-finite cells (no colour map used here holds it)."""
    from matplotlib.image import imread

    rgb = imread(BytesIO(png), format="png")[..., :3]
    return int(np.count_nonzero((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.15) & (rgb[..., 2] > 0.9)))


def test_heatmaps_mark_nan_and_inf_in_magenta():
    ours = np.random.default_rng(1).standard_normal((6, 4))
    reference = ours.copy()
    assert _magenta_pixels(plots.heatmaps("finite", ours, reference * 1.1)) == 0
    ours[0, 0], ours[1, 2], reference[3, 3] = np.nan, np.inf, -np.inf
    some = _magenta_pixels(plots.heatmaps("non-finite", ours, reference))
    assert some > 0
    everything = plots.heatmaps("all nan", np.full((2, 2), np.nan), np.full((2, 2), np.inf))
    assert _size(everything)[0] > 1000
    assert _magenta_pixels(everything) > some  # every cell of all three panels is non-finite


def test_heatmaps_of_a_large_layer_render_at_a_readable_size():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((784, 300))
    width, height = _size(plots.heatmaps("fc1.W", weights, weights * 1.0001))
    assert width < 2000 and height < 600


def test_jacobian_heatmaps():
    rng = np.random.default_rng(3)
    ours, reference = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 3))
    assert _size(plots.jacobian_heatmaps("act1: Jacobian", ours, reference))[0] > 1000
    assert plots.jacobian_heatmaps("last sample", ours, reference, sample=3).startswith(PNG)
    with pytest.raises(ValueError, match="out of range"):
        plots.jacobian_heatmaps("x", ours, reference, sample=4)
    with pytest.raises(ValueError, match=r"\(batch, out, in\)"):
        plots.jacobian_heatmaps("x", ours[0], reference[0])


def test_png_bytes_are_deterministic():
    a = np.arange(12.0).reshape(3, 4)
    assert plots.heatmaps("t", a, a + 1) == plots.heatmaps("t", a, a + 1)


def test_pngs_decode():
    """The bytes are a real image, not just a signature (decoded with matplotlib's reader)."""
    from matplotlib.image import imread

    image = imread(BytesIO(plots.heatmaps("t", np.eye(3), np.eye(3))), format="png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_pyplot_is_never_imported():
    code = "import gradparity.report.plots, sys; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _image_titles(fig) -> list[str]:
    return [ax.get_title().splitlines()[0] for ax in fig.axes if ax.images]


def test_heatmaps_of_image_tensors_draw_each_channel_as_an_image():
    rng = np.random.default_rng(3)
    ours = rng.standard_normal((4, 3, 6, 5))  # (N, C, H, W)
    reference = ours.copy()
    reference[2, 1, 3, 2] += 1.0
    fig = plots.channel_figure("conv1 grad_input", ours, reference)
    titles = _image_titles(fig)
    for side in ("ours", "reference", "ours - reference"):
        assert [t for t in titles if t.startswith(f"{side}, ")] == [
            f"{side}, channel {c}" for c in range(3)
        ]
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert all(a.shape == (6, 5) for a in images)  # (H, W), not flattened
    assert "sample 2" in fig._suptitle.get_text()  # the sample with the difference
    png = plots.heatmaps("conv1 grad_input", ours, reference)
    assert png == plots.heatmaps("conv1 grad_input", ours, reference)
    flat = plots.heatmaps("conv1 grad_input", ours.reshape(4, 3, 30), reference.reshape(4, 3, 30))
    assert _size(png)[1] > _size(flat)[1]  # a row of panels per channel


def test_heatmaps_of_many_channels_keep_those_that_differ():
    ours = np.zeros((2, 3 * plots.MAX_CHANNELS, 2, 2))
    reference = ours.copy()
    reference[1, 2 * plots.MAX_CHANNELS + 1] = 1.0
    titles = _image_titles(plots.channel_figure("conv2 output", ours, reference))
    assert len(titles) == 3 * plots.MAX_CHANNELS
    assert f"ours, channel {2 * plots.MAX_CHANNELS + 1}" in titles
