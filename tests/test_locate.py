"""The locate stage on hand-built rows: statuses, root causes and the chain's first divergence.

Design: a root cause is a layer whose own quantities diverge in isolation; in the chain, a
divergence at a root cause keeps that status, one after an earlier divergence is ``inherited``,
and when isolation blames nothing the first chain divergence (outputs in forward order, then
gradients in backward order) is the finding.
"""

from __future__ import annotations

from gradparity.core.address import place
from gradparity.core.finding import Finding, finding_from_row
from gradparity.core.row import Row
from gradparity.locate.layers import first_divergence, locate


def _row(mode: str, layer: str, quantity: str, diverged: bool = False, **fields) -> Row:
    row = Row(mode, layer, "Linear", quantity, [2, 3], [2, 3], **fields)
    row.status = "diverged" if diverged else "ok"
    return row


def _chain(*diverging: tuple[str, str]) -> list[Row]:
    """The chain rows of fc1 -> act1 -> fc2 -> loss in propagation order; ``diverging`` places
    get status "diverged" (as the compare stage leaves them)."""
    order = [
        ("fc1", "output"),
        ("act1", "output"),
        ("fc2", "output"),
        ("loss", "output"),
        ("loss", "grad_input"),
        ("fc2", "grad_input"),
        ("fc2", "grad:W"),
        ("act1", "grad_input"),
        ("fc1", "grad_input"),
        ("fc1", "grad:W"),
    ]
    return [_row("chain", layer, q, (layer, q) in diverging) for layer, q in order]


def _status(rows: list[Row]) -> dict[tuple[str, str], str]:
    return {(r.layer, r.quantity): r.status for r in rows}


# ------------------------------------------------------------------ isolation decides


def test_isolated_divergence_is_the_root_cause_and_later_chain_rows_inherit():
    iso = [
        _row("isolate", "fc1", "output"),
        _row("isolate", "fc2", "grad:W", True, diagnosis="scaled", message="values are 2 times"),
        _row("isolate", "fc2", "grad_input"),
    ]
    chain = _chain(("fc2", "grad:W"), ("act1", "grad_input"), ("fc1", "grad:W"))
    roots = locate(chain, iso)
    assert [(f.layer, f.quantity, f.diagnosis, f.mode) for f in roots] == [
        ("fc2", "grad:W", "scaled", "isolate")
    ]
    assert iso[1].status == "root_cause"
    assert [r.status for r in iso if r is not iso[1]] == ["ok", "ok"]
    status = _status(chain)
    assert status[("fc2", "grad:W")] == "root_cause"
    assert status[("act1", "grad_input")] == "inherited"
    assert status[("fc1", "grad:W")] == "inherited"
    assert [r.status for r in chain].count("ok") == 7


def test_every_isolated_divergence_is_a_root_cause_in_order():
    iso = [
        _row("isolate", "fc1", "output", True),
        _row("isolate", "act1", "output"),
        _row("isolate", "fc2", "grad_input", True),
    ]
    roots = locate(_chain(("fc1", "output")), iso)
    assert [(f.layer, f.quantity) for f in roots] == [("fc1", "output"), ("fc2", "grad_input")]
    assert all(f.mode == "isolate" for f in roots)


def test_a_chain_divergence_after_a_root_cause_is_inherited_even_when_blamed_later():
    """The chain shows how error spreads: once something diverged, later rows inherit unless
    they are themselves root causes."""
    iso = [_row("isolate", "fc1", "output", True), _row("isolate", "fc2", "grad:W", True)]
    chain = _chain(("fc1", "output"), ("act1", "output"), ("fc2", "grad:W"))
    locate(chain, iso)
    status = _status(chain)
    assert status[("fc1", "output")] == "root_cause"
    assert status[("act1", "output")] == "inherited"
    assert status[("fc2", "grad:W")] == "root_cause"


def test_a_chain_divergence_before_any_root_cause_stays_diverged_without_a_finding():
    iso = [_row("isolate", "fc2", "output", True)]
    chain = _chain(("fc1", "output"), ("fc2", "output"))
    roots = locate(chain, iso)
    assert [(f.layer, f.quantity) for f in roots] == [("fc2", "output")]
    status = _status(chain)
    assert status[("fc1", "output")] == "diverged"
    assert status[("fc2", "output")] == "root_cause"


def test_gradient_that_follows_a_diverging_forward_is_inherited_not_blamed():
    iso = [
        _row("isolate", "act1", "output", True),
        _row("isolate", "act1", "grad_input", True, follows_forward=True),
    ]
    roots = locate(_chain(), iso)
    assert [(f.layer, f.quantity) for f in roots] == [("act1", "output")]
    assert iso[1].status == "inherited"


# ------------------------------------------------------------------ chain-order fallback


def test_without_an_isolated_root_cause_the_first_chain_divergence_is_the_finding():
    iso = [_row("isolate", "fc1", "output"), _row("isolate", "fc2", "grad:W")]
    chain = _chain(("fc2", "output"), ("loss", "output"), ("fc1", "grad:W"))
    roots = locate(chain, iso)
    assert [(f.layer, f.quantity, f.mode) for f in roots] == [("fc2", "output", "chain")]
    assert roots[0].diagnosis == "unexplained"  # the chain row carried no label
    status = _status(chain)
    assert status[("fc2", "output")] == "diverged"
    assert status[("loss", "output")] == "inherited"
    assert status[("fc1", "grad:W")] == "inherited"
    assert all(r.status == "ok" for r in iso)


def test_with_no_isolate_run_at_all_the_first_chain_divergence_is_the_finding():
    chain = _chain(("act1", "grad_input"), ("fc1", "grad_input"))
    roots = locate(chain, [])
    assert [(f.layer, f.quantity, f.mode) for f in roots] == [("act1", "grad_input", "chain")]
    assert _status(chain)[("fc1", "grad_input")] == "inherited"


def test_chain_fallback_gradients_come_in_backward_order():
    """fc2's input gradient comes before fc1's in backward order, whatever the layer order."""
    chain = _chain(("fc1", "grad:W"), ("fc2", "grad_input"))
    roots = locate(chain, [])
    assert [(f.layer, f.quantity) for f in roots] == [("fc2", "grad_input")]


def test_nothing_diverges_nothing_is_found():
    chain, iso = _chain(), [_row("isolate", "fc1", "output")]
    assert locate(chain, iso) == []
    assert all(r.status == "ok" for r in chain + iso)


# ------------------------------------------------------------------ first_divergence


def test_first_divergence_names_first_output_and_first_gradient():
    chain = _chain(("act1", "output"), ("fc2", "output"), ("fc2", "grad:W"), ("fc1", "grad:W"))
    assert first_divergence(chain) == {
        "forward": {"layer": "act1", "quantity": "output"},
        "backward": {"layer": "fc2", "quantity": "grad:W"},
    }


def test_first_divergence_with_only_gradients_or_nothing():
    assert first_divergence(_chain(("loss", "grad_input"))) == {
        "forward": None,
        "backward": {"layer": "loss", "quantity": "grad_input"},
    }
    assert first_divergence(_chain()) == {"forward": None, "backward": None}
    assert first_divergence([]) == {"forward": None, "backward": None}


def test_first_divergence_reads_statuses_set_by_locate():
    """After locate, inherited and root-cause rows still count as diverged."""
    chain = _chain(("fc1", "output"), ("fc1", "grad:W"))
    locate(chain, [_row("isolate", "fc1", "output", True)])
    assert first_divergence(chain)["forward"] == {"layer": "fc1", "quantity": "output"}
    assert first_divergence(chain)["backward"] == {"layer": "fc1", "quantity": "grad:W"}


# ------------------------------------------------------------------ findings


def test_finding_from_row_carries_place_label_numbers_and_advice():
    row = _row(
        "isolate",
        "fc2",
        "grad:b",
        True,
        diagnosis="sign_flipped",
        message="the opposite sign",
        fix="flip the sign",
        max_abs=0.5,
        mismatch_frac=1.0,
        detail={"factor": -1.0},
    )
    f = finding_from_row(row, "isolate")
    assert isinstance(f, Finding)
    assert (f.layer, f.quantity, f.diagnosis, f.mode) == (
        "fc2",
        "grad:b",
        "sign_flipped",
        "isolate",
    )
    assert f.detail == {"factor": -1.0, "max_abs": 0.5, "mismatch_frac": 1.0}
    assert f.message == "fc2.b: the opposite sign; flip the sign"
    assert (f.problem, f.fix) == ("the opposite sign", "flip the sign")
    assert f.step is None
    assert f.as_dict()["detail"] == f.detail
    assert row.detail == {"factor": -1.0}  # the row keeps its own detail


def test_finding_without_a_message_or_numbers_still_says_what_is_wrong():
    f = finding_from_row(_row("chain", "act1", "output", True), "chain")
    assert f.diagnosis == "unexplained"
    assert f.message == "act1 output: values differ from the reference"
    assert f.fix == "" and f.detail == {}


def test_a_finding_keeps_numbers_already_in_its_detail():
    row = _row("isolate", "fc1", "grad:W", True, max_abs=0.5, mismatch_frac=0.25)
    row.detail = {"max_abs": 7.0}
    assert finding_from_row(row, "isolate").detail == {"max_abs": 7.0, "mismatch_frac": 0.25}


def test_place_names_quantities_as_a_person_does():
    assert place("fc2", "grad:b") == "fc2.b"
    assert place("fc2", "param:b") == "fc2.b update"
    assert place("fc2", "state:W.exp_avg") == "fc2.W exp_avg"
    assert place("fc2", "state:W.exp.avg") == "fc2.W exp.avg"
    assert place("fc2", "output") == "fc2 output"
    assert place("loss", "grad_input") == "loss grad_input"
    assert place("backprop", "grad:W:0") == "backprop.W:0"  # a key may hold a colon itself
