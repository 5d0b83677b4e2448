"""DomainBed's three selection methods on the hand-made sweeps.

The expected numbers are worked out by hand from report_sweeps.TOY2 / TOY3.
Notation: a run is "alg envT trial/hparams"; val/test per checkpoint.
"""

import json
import math
import warnings

import pytest

from kdg.report import (LeaveOneDomainOut, MissingRunsError, OracleSelection, ResultsWarning,
                        TrainingDomainValidation, get_method, load_runs, mean_and_stderr, select)

SQRT2 = math.sqrt(2)


def _runs(*dirs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        return load_runs(list(dirs))


def _accs(selection, algorithm, env, dataset="Toy2"):
    group = selection.group(dataset, algorithm, env)
    return None if group is None else group.accs


def test_mean_and_stderr_is_population_std_over_sqrt_n():
    # [.62, .70]: mean .66; deviations +-.04, population std .04; stderr .04 / sqrt(2)
    mean, stderr = mean_and_stderr([.62, .70])
    assert mean == pytest.approx(.66) and stderr == pytest.approx(.04 / SQRT2)
    assert mean_and_stderr([.5]) == (.5, 0.0)
    assert mean_and_stderr([]) == (None, None)


# --------------------------------------------------------- training-domain validation
# val = env{other}_out_acc (the one training domain of Toy2), test = env{t}_in_acc.
#
# ERM env0 (val = env1_out):
#   t0/h0: val .70 .80 .80 -> first max, step 100 -> test .55 (step 200 would give .57)
#   t0/h1: val .60 .80 .75 -> step 100 -> test .62
#     tie .80 = .80 between hparams: DomainBed takes the highest hparams_seed -> h1, .62
#   t1/h0: val .60 .78 -> .70;  t1/h1: val .65 .70 -> .66;  best h0 -> .70
#   cell: [.62, .70] -> 66.0 +- 2.8 (stderr .04/sqrt2)
# ERM env1 (val = env0_out):
#   t0/h0: .60 .75 -> .41;  t0/h1: .70 .82 -> .45;  best h1 -> .45
#   t1/h0: .66 .80 -> .48;  t1/h1: .84 .70 -> step 0 -> .51;  best h1 -> .51
#   cell: [.45, .51] -> 48.0 +- 2.1 (.03/sqrt2)
# Fish env0: t0: h0 (.84 -> .64) beats h1 (.79 -> .58);  t1: h0 (.81 -> .70) beats h1 (.80 -> .64)
#   cell: [.64, .70] -> 67.0 +- 2.1
# Fish env1: t0: h0 (.78 -> .52) beats h1 (.76 -> .47); trial 1 only has the unfinished
#   run (left out by default) -> [.52], 1 trial of 2.
#   With include_unfinished: t1/h0 val .70 .79 -> .48 -> [.52, .48] -> 50.0 +- 1.4
# CorGrad env0: t0/h0 only, val .60 .77 -> .72; no env1 run at all.

def test_training_domain_validation_numbers(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain")
    assert sel.method is TrainingDomainValidation
    assert _accs(sel, "ERM", 0) == pytest.approx([.62, .70])
    assert _accs(sel, "ERM", 1) == pytest.approx([.45, .51])
    assert _accs(sel, "Fish", 0) == pytest.approx([.64, .70])
    assert _accs(sel, "Fish", 1) == pytest.approx([.52])
    assert _accs(sel, "CorGrad", 0) == pytest.approx([.72])
    assert sel.group("Toy2", "CorGrad", 1) is None
    erm0 = sel.group("Toy2", "ERM", 0)
    assert erm0.mean == pytest.approx(.66) and erm0.stderr == pytest.approx(.04 / SQRT2)
    erm1 = sel.group("Toy2", "ERM", 1)
    assert erm1.mean == pytest.approx(.48) and erm1.stderr == pytest.approx(.03 / SQRT2)
    assert sel.expected_trials == 2     # cells have 2,2,2,1,1 trials


def test_tie_between_hparams_goes_to_the_highest_hparams_seed(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain")
    trial0 = sel.group("Toy2", "ERM", 0).trials[0]
    assert [(s, v) for s, v, _ in trial0.candidates] == [(0, pytest.approx(.80)),
                                                          (1, pytest.approx(.80))]
    assert trial0.hparams_seed == 1 and trial0.test_acc == pytest.approx(.62)


def test_tie_between_checkpoints_goes_to_the_earliest_step(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain")
    runs_h0 = [r for r in sel.runs if (r.algorithm, r.test_envs, r.trial_seed, r.hparams_seed)
               == ("ERM", (0,), 0, 0)]
    # steps 100 and 200 both have val .80: step 100 (test .55), not 200 (test .57)
    checkpoint = TrainingDomainValidation.run_acc(runs_h0, test_env=0)
    assert checkpoint.step == 100 and checkpoint.test_acc == pytest.approx(.55)
    assert sel.group("Toy2", "ERM", 0).trials[0].candidates[0][2] == pytest.approx(.55)


def test_unfinished_runs_are_left_out_but_recorded(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain")
    fish1 = sel.group("Toy2", "Fish", 1)
    assert [t.trial_seed for t in fish1.trials] == [0]
    assert len(fish1.unfinished) == 1 and not fish1.unfinished[0].done
    assert not sel.group("Toy2", "Fish", 0).unfinished


def test_include_unfinished_uses_them(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain", include_unfinished=True)
    fish1 = sel.group("Toy2", "Fish", 1)
    assert fish1.accs == pytest.approx([.52, .48])
    assert fish1.mean == pytest.approx(.50) and fish1.stderr == pytest.approx(.02 / SQRT2)
    assert len(fish1.unfinished) == 1            # still marked


# ------------------------------------------------------------------------- oracle
# Last checkpoint only; val = env{t}_out_acc, test = env{t}_in_acc.
# ERM env0: t0: h0 (step 200: val .60, test .57) vs h1 (val .66, test .61) -> .61
#           t1: h0 (val .72, test .70) vs h1 (val .74, test .66) -> .66
#   cell: [.61, .66] -> 63.5 +- 1.8 (.025/sqrt2)
# ERM env1: t0: h0 (val .42, test .41) vs h1 (val .40, test .45) -> .41
#           t1: h0 (val .47, test .48) vs h1 (val .50, test .52) -> .52
#   cell: [.41, .52] -> 46.5 +- 3.9 (.055/sqrt2)
# Fish env0: t0: h0 (.60 -> .64) vs h1 (.64 -> .58) -> .58; t1: h0 (.66 -> .70) vs h1 (.70 -> .64)
#   -> .64; cell [.58, .64] -> 61.0 +- 2.1
# Fish env1: t0: h0 (.49 -> .52) vs h1 (.52 -> .47) -> .47; unfinished t1 left out -> [.47]
#   with include_unfinished: t1/h0 last complete line is step 100: val .47, test .48
# CorGrad env0: last step val .70, test .72.

def test_oracle_numbers(toy2_dir):
    sel = select(_runs(toy2_dir), "oracle")
    assert sel.method is OracleSelection
    assert _accs(sel, "ERM", 0) == pytest.approx([.61, .66])
    assert _accs(sel, "ERM", 1) == pytest.approx([.41, .52])
    assert _accs(sel, "Fish", 0) == pytest.approx([.58, .64])
    assert _accs(sel, "Fish", 1) == pytest.approx([.47])
    assert _accs(sel, "CorGrad", 0) == pytest.approx([.72])
    assert sel.group("Toy2", "ERM", 1).stderr == pytest.approx(.055 / SQRT2)
    assert all(t.step == 200 for t in sel.group("Toy2", "ERM", 0).trials[:1])
    sel = select(_runs(toy2_dir), "oracle", include_unfinished=True)
    assert _accs(sel, "Fish", 1) == pytest.approx([.47, .48])


# ----------------------------------------------------------- leave-one-domain-out
# Toy3, test env 0, trial 0. At each step:
#   val = (env1_in of run [0,1] + env2_in of run [0,2]) / 2, test = env0_in of run [0].
#   h0: step 0 (.70 + .60)/2 = .65, step 100 (.80 + .70)/2 = .75 -> step 100, test .60
#   h1: step 0 (.90 + .80)/2 = .85, step 100 (.70 + .70)/2 = .70 -> step 0,   test .55
#   best h1 (.85) -> .55
# (training-domain validation on the same [0] runs picks h0 -> .60, oracle h1 -> .58)

def test_leave_one_domain_out_numbers(toy3_dir):
    runs = _runs(toy3_dir)
    sel = select(runs, "leave_one_domain_out")
    assert sel.method is LeaveOneDomainOut
    (trial,) = sel.group("Toy3", "ERM", 0).trials
    assert trial.hparams_seed == 1 and trial.step == 0
    assert trial.val_acc == pytest.approx(.85) and trial.test_acc == pytest.approx(.55)
    assert trial.run.test_envs == (0,)
    assert [(s, round(v, 6)) for s, v, _ in trial.candidates] == [(0, .75), (1, .85)]
    # the [0, j] runs also join the groups of test env j, which have no [j] run: no result
    assert sel.group("Toy3", "ERM", 1).trials == []
    assert _accs(select(runs, "training_domain"), "ERM", 0, "Toy3") == pytest.approx([.60])
    assert _accs(select(runs, "oracle"), "ERM", 0, "Toy3") == pytest.approx([.58])


def test_leave_one_domain_out_without_pair_runs_says_so(toy2_dir):
    with pytest.raises(MissingRunsError, match="leave_one_domain_out needs runs with two test "
                                               "domains; none found"):
        select(_runs(toy2_dir), "leave_one_domain_out")


def test_leave_one_domain_out_names_the_missing_runs(toy2_dir, toy3_dir):
    sel = select(_runs(toy2_dir, toy3_dir), "loo")
    assert _accs(sel, "ERM", 0) == []          # Toy2 has no [0, 1] runs
    assert ("Toy2", "Toy2/ERM test env 0, trial 0: no result, no run with test_envs=[0, j] "
            "for j in [1]") in sel.notes
    assert _accs(sel, "ERM", 0, "Toy3") == pytest.approx([.55])


def test_method_names():
    assert get_method("training-domain") is TrainingDomainValidation
    assert get_method("IIDAccuracySelectionMethod") is TrainingDomainValidation
    assert get_method("oracle") is OracleSelection
    assert get_method(LeaveOneDomainOut) is LeaveOneDomainOut
    with pytest.raises(ValueError, match="unknown selection method"):
        get_method("best_guess")


def test_hparams_gap_is_noted(toy2_dir):
    sel = select(_runs(toy2_dir), "training_domain")
    # CorGrad's only trial chose among 1 setting; every other trial had 2.
    assert [m for _, m in sel.notes] == [
        "Toy2/CorGrad test env 0, trial 0: 1 hparams setting(s), most trials have 2"]


def test_duplicate_runs_are_pooled_and_noted(tmp_path):
    # The same setting run twice (a rerun): DomainBed pools the records.
    # a: val .60 -> test .50;  b: val .90 -> test .40;  pooled best val .90 -> .40
    from report_sweeps import write_run
    first = write_run(tmp_path / "a", "Toy2", ("ERM", (0,), 0, 0), [(0, .50, .5, .5, .60)])
    rerun = write_run(tmp_path / "b", "Toy2", ("ERM", (0,), 0, 0), [(0, .40, .5, .5, .90)])
    # elsewhere, on another backend, fewer splits evaluated: the same settings
    for run, args in ((first, dict(backend="jax", eval_splits="all")),
                      (rerun, dict(output_dir="elsewhere", backend="torch", eval_splits="selection"))):
        record = json.loads((run / "results.jsonl").read_text())
        record["args"].update(args)
        (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    sel = select(_runs(tmp_path), "training_domain")
    assert _accs(sel, "ERM", 0) == pytest.approx([.40])
    (note,) = [m for _, m in sel.notes]
    assert note.startswith("Toy2/ERM test_envs=[0], trial 0, hparams 0: 2 runs, their records pooled")
    assert "differ" not in note  # a rerun of the same settings


def test_pooled_runs_with_other_settings_are_named(tmp_path):
    """Two recipes under the same seeds (lr changed, seeds not): pooled as
    DomainBed would, and the note says what differs."""
    from report_sweeps import write_run
    write_run(tmp_path / "a", "Toy2", ("ERM", (0,), 0, 0), [(0, .50, .5, .5, .60)],
              hparams={"lr": 1e-3, "batch_size": 64})
    write_run(tmp_path / "b", "Toy2", ("ERM", (0,), 0, 0), [(0, .40, .5, .5, .90)],
              hparams={"lr": 3e-4, "batch_size": 64})
    # c: a field only one run records (an older kdg wrote the other) is no difference
    write_run(tmp_path / "c", "Toy2", ("ERM", (0,), 0, 0), [(0, .45, .5, .5, .70)],
              hparams={"lr": 3e-4, "batch_size": 64, "new_field": 1})
    (note,) = [m for _, m in select(_runs(tmp_path), "training_domain").notes]
    assert note.endswith("(WARNING: they differ in lr: 0.001 / 0.0003 / 0.0003: different "
                         "settings pooled as one)")


@pytest.mark.parametrize("n, more", [(5, ""), (7, " and 2 more")])
def test_pooled_runs_name_five_differences_and_count_the_rest(tmp_path, n, more):
    from report_sweeps import write_run
    keys = [f"h{i}" for i in range(n)]
    write_run(tmp_path / "a", "Toy2", ("ERM", (0,), 0, 0), [(0, .50, .5, .5, .60)],
              hparams=dict.fromkeys(keys, 1))
    write_run(tmp_path / "b", "Toy2", ("ERM", (0,), 0, 0), [(0, .40, .5, .5, .90)],
              hparams=dict.fromkeys(keys, 2))
    (note,) = [m for _, m in select(_runs(tmp_path), "training_domain").notes]
    shown = "; ".join(f"{k}: 1 / 2" for k in keys[:5])
    assert note.endswith(f"(WARNING: they differ in {shown}{more}: different settings "
                         "pooled as one)")
