"""Are report files the same on another machine? Writes report.json for every bug of the
corpora (layer, one-function against torch and against central differences, training) and for
the correct models, once per set of kernels another CPU would pick, and compares the files.

Each set changes the last bits of the raw gradients here (printed: a hash of one model's raw
torch and NumPy results per set), so equal files show that rounding and the noise floors hide
the machine, not that nothing moved.

Run: .venv/bin/python benchmarks/machine_independence.py
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_SETS = {
    "defaults": {},
    "sandybridge+generic+sse4.2": {
        "OPENBLAS_CORETYPE": "SandyBridge",
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
    "prescott, 1 thread": {
        "OPENBLAS_CORETYPE": "Prescott",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    },
}

_WRITE_REPORTS = """
import sys
from pathlib import Path
from gradparity.corpus import selftest
from gradparity.corpus.layer_bugs import BUGS, UNMUTATED
from gradparity.corpus.function_bugs import FUNCTION_BUGS, function_setup
from gradparity.pipelines.function import compare_function
from gradparity.reference import mirror
from gradparity.pipelines.training import compare_training
from gradparity.corpus.training_bugs import TRAINING_BUGS

out = Path(sys.argv[1])
for bug in BUGS:
    (out / f"{bug.name}.json").write_text(selftest.compare_setup(*bug.build(0)).to_json())
for name, build in UNMUTATED.items():
    for seed in range(3):
        report = selftest.compare_setup(*build(seed), seed=seed)
        (out / f"correct_{name}_{seed}.json").write_text(report.to_json())
for bug in FUNCTION_BUGS:
    for numeric in (False, True):
        report = compare_function(**function_setup(bug, 0, numeric), seed=0)
        (out / f"fn_{bug.name}_{numeric}.json").write_text(report.to_json())
for bug in TRAINING_BUGS:
    model, ours_opt, ref_opt = bug.build(0)
    report = compare_training(model, mirror(model), selftest.training_batches(0),
                              ours_optimizer=ours_opt, reference_optimizer=ref_opt, seed=0)
    (out / f"train_{bug.name}.json").write_text(report.to_json())
"""

_RAW_HASH = """
import hashlib, numpy as np, torch
from gradparity.cli import zoo
s = zoo.build("mlp", 0)
x = torch.tensor(s.x, requires_grad=True)
model = s.reference.double()
torch.nn.functional.cross_entropy(model(x), torch.tensor(s.target)).backward()
h = hashlib.sha1(x.grad.numpy().tobytes())
for p in model.parameters():
    h.update(p.grad.numpy().tobytes())
rng = np.random.default_rng(0)
a = rng.normal(size=(16, 784)) @ rng.normal(size=(784, 300))
print(h.hexdigest()[:10], hashlib.sha1(a.tobytes()).hexdigest()[:10])
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for name, env in KERNEL_SETS.items():
            torch_hash, numpy_hash = _run(_RAW_HASH, env).split()
            folder = Path(tmp) / name.replace(" ", "_").replace(",", "")
            folder.mkdir()
            _run(_WRITE_REPORTS, env, str(folder))
            folders[name] = folder
            print(f"{name:30s} raw torch {torch_hash}  raw numpy {numpy_hash}")
        first, *others = folders.values()
        names = sorted(p.name for p in first.iterdir())
        differing = {
            other.name: [n for n in names if not filecmp.cmp(first / n, other / n, shallow=False)]
            for other in others
        }
    for other, files in differing.items():
        print(f"{other}: {len(files)} of {len(names)} report.json differ {files[:5]}")
    same = not any(differing.values())
    print(
        f"{len(names)} reports, {len(KERNEL_SETS)} kernel sets: "
        f"{'byte-identical' if same else 'NOT identical'}"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
