"""``gradparity train``: both sides trained side by side from the command line.

Exit 0 when no step diverged; the summary names the validation accuracy of both sides; the
report folder holds report.json (with the per-step history), report.html and the training
curves; usage errors exit 2 with one line on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_compare import assert_same_report_folder

from gradparity.cli.main import main


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def scored(history: list[dict]) -> list[dict]:
    """History rows that carry a validation accuracy."""
    return [h for h in history if h.get("val_acc_ours") is not None]


def test_train_assignment_on_synth(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "synth",
            "--model",
            "assignment",
            "--steps",
            "60",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out
    assert "validation accuracy ours" in text
    assert "reference" in text
    assert "60 steps" in text
    assert "no divergence" in text
    assert str(out / "report.md") in text
    for name in ("report.json", "report.html", "report.md", "table.csv"):
        assert (out / name).is_file(), name
    assert (out / "plots" / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "plots" / "error_growth.png").is_file()
    data = strict_json((out / "report.json").read_text())
    assert data["ok"] is True
    assert data["first_divergent_step"] is None
    assert [h["step"] for h in data["history"]] == list(range(1, 61))


def test_summary_accuracy_matches_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synth", "--steps", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    data = strict_json((out / "report.json").read_text())
    last = scored(data["history"])[-1]
    assert f"ours {last['val_acc_ours']:.3f}" in text
    assert f"reference {last['val_acc_ref']:.3f}" in text


def test_final_step_is_scored(tmp_path, capsys):
    """The summary's validation accuracy is that of the trained model: the last step is
    scored even when it is not a multiple of the evaluation interval (45 steps, eval every
    2)."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synth", "--steps", "45", "--out", str(out)]) == 0
    capsys.readouterr()
    history = strict_json((out / "report.json").read_text())["history"]
    assert history[-1]["step"] == 45
    assert history[-1].get("val_acc_ours") is not None
    assert history[-1].get("val_acc_ref") is not None


def test_assignment_reproduced_with_defaults(tmp_path, capsys):
    """The default run (mlp, 300 hidden, digits, sgd lr 0.5, 10 epochs, batch 32): ours learns
    the task as well as the reference, and the two loss curves overlap at every step."""
    out = tmp_path / "default"
    code = main(["train", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mlp-digits-sgd" in captured.out
    assert "lr 0.5, batch 32" in captured.out
    assert "no divergence" in captured.out
    data = strict_json((out / "report.json").read_text())
    assert data["ok"] is True
    assert data["first_divergent_step"] is None
    history = data["history"]
    # digits: 1797 examples, 20% validation -> 1438 training -> 45 batches of 32 per epoch
    assert len(history) == 10 * 45
    assert [h["step"] for h in history] == list(range(1, 451))
    for h in history:
        assert abs(h["loss_ours"] - h["loss_ref"]) <= 1e-9, h
    final = scored(history)[-1]
    assert final["val_acc_ours"] >= 0.90
    assert final["val_acc_ours"] == final["val_acc_ref"]
    assert (out / "plots" / "training_curves.png").is_file()
    # The committed example is what the README's command writes, number by number.
    root = Path(__file__).resolve().parents[1]
    assert "gradparity train --out reports/train-example" in (root / "README.md").read_text()
    assert_same_report_folder(out, root / "reports" / "train-example")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizers_short_run(tmp_path, capsys, optimizer):
    out = tmp_path / optimizer
    code = main(
        [
            "train",
            "--dataset",
            "synth",
            "--steps",
            "30",
            "--optimizer",
            optimizer,
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"mlp-synth-{optimizer}" in captured.out
    assert "no divergence" in captured.out
    data = strict_json((out / "report.json").read_text())
    assert len(data["history"]) == 30
    assert data["first_divergent_step"] is None


def test_float32_short_run(tmp_path, capsys):
    out = tmp_path / "f32"
    code = main(
        ["train", "--dataset", "synth", "--steps", "30", "--dtype", "float32", "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert strict_json((out / "report.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--steps", "5", "--epochs", "2"], ["--steps", "--epochs"]),
        (["--dataset", "foo"], ["foo", "synth"]),
        (["--batch-size", "0"], ["--batch-size", "0"]),
        (["--batch-size", "-4"], ["--batch-size", "-4"]),
        (["--lr", "-1"], ["--lr", "-1"]),
        (["--lr", "0"], ["--lr"]),
        (["--dataset", "mnist:/nonexistent"], ["/nonexistent"]),
        (["--steps", "0"], ["steps", "0"]),
        (["--epochs", "0"], ["epochs", "0"]),
        (["--epochs", "-1"], ["epochs", "-1"]),
        (["--hidden", "0"], ["hidden", "0"]),
    ],
    ids=[
        "steps_and_epochs",
        "unknown_dataset",
        "batch_size_zero",
        "batch_size_negative",
        "lr_negative",
        "lr_zero",
        "mnist_missing",
        "steps_zero",
        "epochs_zero",
        "epochs_negative",
        "hidden_zero",
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, words):
    out = tmp_path / "never"
    dataset = [] if "--dataset" in args else ["--dataset", "synth"]
    try:
        code = main(["train", *dataset, *args, "--out", str(out)])
    except SystemExit as refusal:  # an option's own check, run by argparse as its type
        code = refusal.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gradparity: error:")
    for word in words:
        assert word in lines[0], lines[0]
    assert captured.out == ""
    assert not out.exists()


def test_unknown_optimizer_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--optimizer", "rmsprop", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "rmsprop" in capsys.readouterr().err
