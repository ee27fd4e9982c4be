"""Command line: ``gradparity check``, ``train``, ``selftest`` and ``report``.

Exit status: 0 parity, 1 divergence found, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradparity.cli import factories, report_command, zoo
from gradparity.cli.errors import (
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_USAGE,
    OneLineParser,
    internal_error,
    internal_failure,
    option_type,
    say,
    user_exit,
)
from gradparity.cli.factories import AUTODIFF
from gradparity.core import escape
from gradparity.core.errors import InputError
from gradparity.core.validate import DTYPES, check_count, check_seed
from gradparity.report.folder import check_target
from gradparity.report.terminal import render as render_terminal
from gradparity.report.terminal import use_colour

# Each command imports what it runs inside its function: torch, pandas and the harness load
# when a command runs, not for --help.
if TYPE_CHECKING:
    from gradparity.report.report import Report


def _check_out(path: str) -> Path:
    """The report folder as given, refused before anything runs when a save could not replace
    it (``folder.check_target``)."""
    if not path:
        raise InputError("--out needs a folder name")
    check_target(path)
    return Path(path)


def _inject(model: Any, bug_name: str) -> tuple[Any, Any]:
    """The model and default loss with a corpus bug injected (``check --bug``)."""
    from gradparity.corpus.layer_bugs import BUGS, inject
    from gradparity.ours import SoftmaxCrossEntropy

    bug = next((b for b in BUGS if b.name == bug_name), None)
    if bug is None:
        raise InputError(f"unknown bug {bug_name!r}; choose from {', '.join(b.name for b in BUGS)}")
    try:
        return inject(model, SoftmaxCrossEntropy(), bug)
    except TypeError as exc:
        raise InputError(f"{exc}; this model cannot take it") from exc


def cmd_check(args: argparse.Namespace) -> int:
    from gradparity.ours import SoftmaxCrossEntropy
    from gradparity.pipelines.layers import compare
    from gradparity.report.merge import merge_reports

    out = _check_out(args.out)
    if args.function and (args.model or args.ours or args.bug):
        raise InputError(
            "--function checks a gradient function alone: drop --model, --ours and --bug"
        )
    if args.function and args.reference not in (None, AUTODIFF):
        raise InputError(
            f"with --function, --reference takes only {AUTODIFF!r} (the factory returns any "
            f"torch reference), got {args.reference!r}"
        )
    if not args.function and bool(args.ours) != bool(args.reference):
        raise InputError("--ours and --reference go together")
    if args.ours and args.bug:
        raise InputError("--bug injects into built-in models only, not into --ours")
    if args.ours and args.model:
        raise InputError("give --model or --ours/--reference, not both")
    reports: list[Report] = []
    dtype, seed = args.dtype or "float64", 0 if args.seed is None else args.seed
    if args.function:  # given as None: the factory's own dtype and seed count then
        reports.append(
            factories.function_report(args.function, args.dtype, args.seed, args.reference)
        )
    elif args.ours:
        if args.reference == AUTODIFF:
            kwargs, name = factories.autodiff_setup(args.ours)
        else:
            kwargs, name = factories.custom_setup(args.ours, args.reference, seed)
        reports.append(compare(**kwargs, dtype=dtype, seed=seed, name=name))
    else:
        for model in [args.model] if args.model else zoo.DEFAULT_MODELS:
            try:
                setup = zoo.build(model, seed)
            except KeyError as exc:
                raise InputError(exc.args[0]) from exc
            # The built-in networks' own loss is ours' softmax cross-entropy: it is checked.
            ours, loss, name = setup.ours, SoftmaxCrossEntropy(), setup.name
            if args.bug:
                ours, loss = _inject(ours, args.bug)
                name = f"{setup.name}+{args.bug}"
            reports.append(
                compare(
                    ours,
                    setup.reference,
                    setup.x,
                    setup.target,
                    ours_loss=loss,
                    dtype=dtype,
                    seed=seed,
                    name=name,
                )
            )
    for r in reports:  # --strict: minor differences count as divergences too
        r.strict = r.strict or args.strict
    report = reports[0] if len(reports) == 1 else merge_reports(reports)
    report.save(out)  # a merged report carries its parts into subfolders
    if args.format == "json":
        say(report.to_json(), end="")
    elif args.format == "md":
        say(report.to_markdown(), end="")
    else:
        colour = use_colour(sys.stdout)
        for r in reports:
            say(render_terminal(r, colour))
        say(f"report: {out / 'report.md'}")
    return EXIT_OK if report.ok else EXIT_DIVERGED


def cmd_selftest(args: argparse.Namespace) -> int:
    from gradparity.corpus.selftest import format_table, run_corpus

    try:
        results = run_corpus(args.bug or None, seed=args.seed, jobs=args.jobs)
    except KeyError as exc:
        raise InputError(exc.args[0]) from exc
    if args.format == "json":
        say(json.dumps({"bugs": [r.as_dict() for r in results]}, indent=2))
    else:
        say(format_table(results))
    not_run = [r for r in results if r.error is not None]
    if not_run:  # the table is printed whole; a bug that could not run is an internal error
        details = "\n".join(f"{r.name}: {r.error}\n{r.error_details}" for r in not_run)
        return internal_failure(
            f"{len(not_run)} bug(s) could not be run ({', '.join(r.name for r in not_run)})",
            details,
            args.argv,
        )
    return EXIT_OK if all(r.localized for r in results) else EXIT_DIVERGED


def _jobs_option(text: str) -> int:
    """``--jobs``: a worker count (``parallel.parse_jobs``), refused in argparse's one line."""
    from gradparity.corpus.parallel import parse_jobs

    try:
        return parse_jobs(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TRAIN_MODELS = ("mlp", "assignment", *zoo.TRAIN_ZOO)
DEFAULT_LR = {"sgd": 0.5, "momentum": 0.05, "adam": 1e-3}


def _train_model(name: str, n_features: int, n_classes: int, hidden: int, seed: int):
    from gradparity.ours import Linear, Sequential, Sigmoid, mlp

    if name == "mlp":
        return mlp((n_features, hidden, n_classes), seed=seed)
    rng = np.random.default_rng(seed)  # the assignment's shape: 3 sigmoid hidden units
    return Sequential(
        ("fc1", Linear(n_features, 3, rng=rng)),
        ("act1", Sigmoid()),
        ("fc2", Linear(3, n_classes, rng=rng)),
    )


def _optimizer_pair(kind: str, lr: float):
    import torch

    from gradparity.ours import SGD, Adam

    if kind == "adam":
        return lambda m: Adam(m, lr=lr), lambda p: torch.optim.Adam(p, lr=lr)
    momentum = 0.9 if kind == "momentum" else 0.0
    return (
        lambda m: SGD(m, lr=lr, momentum=momentum),
        lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gradparity.data import batches, load_dataset
    from gradparity.ours import SoftmaxCrossEntropy
    from gradparity.pipelines.training import compare_training
    from gradparity.reference import mirror

    if args.steps is not None and args.epochs is not None:
        raise InputError("give --steps or --epochs, not both")
    out = _check_out(args.out)
    data = load_dataset(args.dataset, seed=args.seed)
    if args.model in zoo.TRAIN_ZOO:  # flat pixels become the images or rows the model takes
        model, shape = zoo.train_model(args.model, data.n_features, data.n_classes, args.seed)
        x_train, x_val = data.x_train.reshape(-1, *shape), data.x_val.reshape(-1, *shape)
    else:
        model = _train_model(args.model, data.n_features, data.n_classes, args.hidden, args.seed)
        x_train, x_val = data.x_train, data.x_val
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be a positive finite number, got {lr}")
    epochs = None if args.steps is not None else (args.epochs or 10)
    per_epoch = -(-len(data.x_train) // args.batch_size)
    total = args.steps if args.steps is not None else epochs * per_epoch
    ours_opt, ref_opt = _optimizer_pair(args.optimizer, lr)
    name = f"{args.model}-{data.name}-{args.optimizer}"
    report = compare_training(
        model,
        mirror(model),
        batches(
            x_train,
            data.y_train,
            args.batch_size,
            seed=args.seed,
            epochs=epochs,
            steps=args.steps,
        ),
        ours_optimizer=ours_opt,
        reference_optimizer=ref_opt,
        ours_loss=SoftmaxCrossEntropy(),  # the built-in network's own loss: checked
        dtype=args.dtype,
        seed=args.seed,
        validation=(x_val, data.y_val),
        eval_every=max(1, min(per_epoch, total // 20 or 1)),
        progress=lambda it: tqdm(
            it, total=total, desc="training", unit="step", disable=not sys.stderr.isatty()
        ),
        name=name,
        strict=args.strict,
    )
    report.save(out)
    assert report.history is not None  # compare_training records one row per step
    scored = report.history.dropna(subset=["val_acc_ours"])
    last = scored.iloc[-1]
    say(
        f"{name}: {len(report.history)} steps, lr {lr:g}, batch {args.batch_size}; "
        f"validation accuracy ours {last.val_acc_ours:.3f}, reference {last.val_acc_ref:.3f}"
    )
    if report.first_divergent_step is None:
        say("no divergence: both sides stayed within tolerance at every step")
    else:
        say(f"first divergent step: {report.first_divergent_step}")
        for f in report.root_causes:
            say(escape.terminal(f"  - [{f.diagnosis}] {f.message}"))
    say(f"report: {out / 'report.md'}")
    return EXIT_OK if report.ok else EXIT_DIVERGED


STRICT_HELP = "exit 1 on minor differences too (an epsilon, a clipping bound)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="gradparity",
        description="Diff hand-written NumPy backprop against PyTorch, layer by layer.",
    )
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="compare ours and the reference once (default)")
    check.add_argument("--model", help=f"a built-in model: {', '.join(zoo.MODELS)}")
    check.add_argument("--ours", metavar="MOD:FACTORY", help="factory of your NumPy model")
    check.add_argument(
        "--reference",
        metavar="MOD:FACTORY",
        help="factory of the torch model, or 'autodiff': the exact gradient of your own "
        "forward code, no torch model",
    )
    check.add_argument(
        "--function",
        metavar="MOD:FACTORY",
        help="backprop written as one function: FACTORY returns a dict of compare_function's "
        "keyword arguments (grads, params, x, target, loss_fn, reference, ...); without "
        "reference: autodiff",
    )
    check.add_argument("--dtype", choices=DTYPES, help="default float64 (or the --function's)")
    check.add_argument("--out", default="reports/latest", help="report folder")
    check.add_argument(
        "--seed", type=option_type(check_seed, "--seed"), help="default 0 (or the --function's)"
    )
    check.add_argument("--format", choices=["text", "md", "json"], default="text")
    check.add_argument("--bug", metavar="NAME", help="inject a known bug (see selftest)")
    check.add_argument("--strict", action="store_true", help=STRICT_HELP)
    check.set_defaults(func=cmd_check)
    train = sub.add_parser(
        "train", help="train both sides side by side, find the first divergent step"
    )
    train.add_argument(
        "--model",
        choices=TRAIN_MODELS,
        default="mlp",
        help="mlp: one sigmoid hidden layer (--hidden units); assignment: 3; cnn, bn-cnn, "
        "lstm: square images (digits 8x8); resmlp",
    )
    train.add_argument("--dataset", default="digits", help="synth, digits or mnist:DIR")
    train.add_argument("--steps", type=option_type(check_count, "--steps"))
    train.add_argument(
        "--epochs",
        type=option_type(check_count, "--epochs"),
        help="default 10 when --steps is not given",
    )
    train.add_argument("--optimizer", choices=list(DEFAULT_LR), default="sgd")
    train.add_argument("--lr", type=float, help="default: sgd 0.5, momentum 0.05, adam 0.001")
    train.add_argument("--batch-size", type=option_type(check_count, "--batch-size"), default=32)
    train.add_argument("--hidden", type=option_type(check_count, "--hidden"), default=300)
    train.add_argument("--dtype", choices=DTYPES, default="float64")
    train.add_argument("--out", default="reports/train")
    train.add_argument("--seed", type=option_type(check_seed, "--seed"), default=0)
    train.add_argument("--strict", action="store_true", help=STRICT_HELP)
    train.set_defaults(func=cmd_train)
    selftest = sub.add_parser("selftest", help="inject the known-bug corpus, show what was found")
    selftest.add_argument("--bug", action="append", metavar="NAME", help="only this bug (repeat)")
    selftest.add_argument("--format", choices=["text", "json"], default="text")
    selftest.add_argument("--seed", type=option_type(check_seed, "--seed"), default=0)
    selftest.add_argument(
        "--jobs",
        type=_jobs_option,
        default=1,
        metavar="N",
        help="run N bugs at once, each in a worker process (0 or auto: one per CPU); default 1",
    )
    selftest.set_defaults(func=cmd_selftest)
    report_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["check", *argv]
    args = parser.parse_args(argv)
    args.argv = argv  # a command that reports an internal failure names its command line
    try:
        return args.func(args)
    except InputError as exc:
        print(escape.terminal(f"gradparity: error: {' '.join(str(exc).split())}"), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # argparse is done: only the code under check exits here
        return user_exit(exc)
    except Exception as exc:  # a bug of ours: never exit 1, which means "divergence found"
        return internal_error(exc, argv)


if __name__ == "__main__":
    sys.exit(main())
