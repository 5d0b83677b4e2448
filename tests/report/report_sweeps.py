"""A small hand-made sweep for the kdg.report tests (data and writers).

Every accuracy below is chosen by hand so that the expected results in the
tests can be worked out on paper (the working is in the tests' comments).
Records are (step, env0_in, env0_out, env1_in, env1_out[, env2_in, env2_out]).

"Toy2" (2 domains):

* ERM: test envs 0 and 1, trials 0 and 1, hparams 0 and 1 (8 runs);
* Fish: test env 0 as ERM; test env 1: trial 0 (hparams 0, 1) and an
  UNFINISHED run (trial 1, hparams 0: no ``done``, truncated last line);
* CorGrad: test env 0, trial 0, hparams 0 only (a missing trial, a missing
  test env).

"Toy3" (3 domains): ERM, test env 0, trial 0, hparams 0 and 1, with the
leave-one-domain-out companions test_envs=[0, 1] and [0, 2].
"""

from __future__ import annotations

import json
import math
from pathlib import Path


TOY2 = {
    # (algorithm, test_envs, trial_seed, hparams_seed): records
    ("ERM", (0,), 0, 0): [(0, .50, .52, .60, .70), (100, .55, .58, .80, .80), (200, .57, .60, .85, .80)],
    ("ERM", (0,), 0, 1): [(0, .40, .40, .50, .60), (100, .62, .64, .70, .80), (200, .61, .66, .75, .75)],
    ("ERM", (0,), 1, 0): [(0, .50, .50, .60, .60), (100, .70, .72, .78, .78)],
    ("ERM", (0,), 1, 1): [(0, .45, .45, .65, .65), (100, .66, .74, .82, .70)],
    ("ERM", (1,), 0, 0): [(0, .60, .60, .30, .30), (100, .80, .75, .41, .42)],
    ("ERM", (1,), 0, 1): [(0, .70, .70, .35, .36), (100, .85, .82, .45, .40)],
    ("ERM", (1,), 1, 0): [(0, .65, .66, .38, .37), (100, .82, .80, .48, .47)],
    ("ERM", (1,), 1, 1): [(0, .70, .84, .51, .52), (100, .75, .70, .52, .50)],
    ("Fish", (0,), 0, 0): [(0, .55, .55, .70, .70), (100, .64, .60, .80, .84)],
    ("Fish", (0,), 0, 1): [(0, .60, .62, .75, .76), (100, .58, .64, .78, .79)],
    ("Fish", (0,), 1, 0): [(0, .60, .60, .70, .72), (100, .70, .66, .82, .81)],
    ("Fish", (0,), 1, 1): [(0, .62, .63, .74, .75), (100, .64, .70, .80, .80)],
    ("Fish", (1,), 0, 0): [(0, .70, .72, .40, .41), (100, .80, .78, .52, .49)],
    ("Fish", (1,), 0, 1): [(0, .72, .74, .42, .40), (100, .79, .76, .47, .52)],
    ("Fish", (1,), 1, 0): [(0, .70, .70, .45, .44), (100, .75, .79, .48, .47)],  # unfinished
    ("CorGrad", (0,), 0, 0): [(0, .50, .50, .60, .60), (100, .72, .70, .75, .77)],
}
UNFINISHED = ("Fish", (1,), 1, 0)
TRUNCATED_LINE = '{"step": 200, "env0_in_acc": 0.9'

TOY3 = {
    # test_envs=[0]: every domain's (in, out)
    ("ERM", (0,), 0, 0): [(0, .50, .51, .80, .60, .80, .60), (100, .60, .61, .90, .70, .90, .80)],
    ("ERM", (0,), 0, 1): [(0, .55, .56, .80, .60, .80, .60), (100, .58, .65, .85, .70, .85, .70)],
    # companions: only env{j}_in_acc of the held-out domain j matters
    ("ERM", (0, 1), 0, 0): [(0, .5, .5, .70, .5, .5, .5), (100, .5, .5, .80, .5, .5, .5)],
    ("ERM", (0, 2), 0, 0): [(0, .5, .5, .5, .5, .60, .5), (100, .5, .5, .5, .5, .70, .5)],
    ("ERM", (0, 1), 0, 1): [(0, .5, .5, .90, .5, .5, .5), (100, .5, .5, .70, .5, .5, .5)],
    ("ERM", (0, 2), 0, 1): [(0, .5, .5, .5, .5, .80, .5), (100, .5, .5, .5, .5, .70, .5)],
}


def make_record(dataset, algorithm, test_envs, trial_seed, hparams_seed, row, hparams=None,
                **extra):
    step, *accs = row
    record = {"step": step, "epoch": step / 50, "loss": 0.7 - step / 1000,
              "step_time": 0.12, "mem_gb": 1.5}
    for i in range(len(accs) // 2):
        record[f"env{i}_in_acc"] = accs[2 * i]
        record[f"env{i}_out_acc"] = accs[2 * i + 1]
    record.update(extra)
    record["args"] = {"dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
                      "hparams_seed": hparams_seed, "trial_seed": trial_seed,
                      "seed": 1000 * trial_seed + hparams_seed, "output_dir": "unused"}
    record["hparams"] = hparams if hparams is not None else {"lr": 5e-5, "batch_size": 32}
    return record


def write_run(root: Path, dataset, key, rows, done=True, tail="", hparams=None, diagnostics=None):
    """Write one run directory; ``diagnostics(step) -> dict`` adds keys."""
    algorithm, test_envs, trial_seed, hparams_seed = key
    run_dir = (root / dataset / algorithm /
               f"te{'-'.join(map(str, test_envs))}_tr{trial_seed}_hp{hparams_seed}")
    run_dir.mkdir(parents=True)
    lines = [json.dumps(make_record(dataset, algorithm, test_envs, trial_seed, hparams_seed, row,
                                    hparams, **(diagnostics(row[0]) if diagnostics else {})))
             for row in rows]
    text = "\n".join(lines) + "\n" + tail
    (run_dir / "results.jsonl").write_text(text)
    if done:
        (run_dir / "done").write_text("")
    return run_dir


def _diagnostics(algorithm):
    """Diagnostics like kdg's trainers would log them, with a null and a NaN."""
    def make(step):
        if algorithm == "CorGrad":
            return {"modification_ratio": 0.1 + step / 1000, "modification_frequency": 0.3,
                    "grad_cos_min": -0.2, "grad_cos_mean": 0.1}
        return {"grad_cos_min": None if step == 0 else -0.1 - step / 1000,
                "grad_cos_mean": math.nan if step == 200 else 0.2}
    return make




def write_toy2(root: Path) -> Path:
    for key, rows in TOY2.items():
        unfinished = key == UNFINISHED
        write_run(root, "Toy2", key, rows, done=not unfinished,
                  tail=TRUNCATED_LINE if unfinished else "",
                  diagnostics=_diagnostics(key[0]))
    return root


def write_toy3(root: Path) -> Path:
    for key, rows in TOY3.items():
        write_run(root, "Toy3", key, rows)
    return root
