"""GGA, gradient-guided annealing (Ballas & Diou, CVPR 2025), as a wrapper
around any other algorithm.

Outside the window [start_step, end_step] (both inclusive) a step is exactly
the base algorithm's step. Inside it, before the base step, on the step's
batch:

1. s_best = min over pairs of cos(g_i, g_j); L_best = L(theta) on the
   concatenated batch; theta_best = theta0 = theta;
2. `trials` times: add U(-rho, rho) noise to the perturbed variables;
   recompute the g_d, s and L on the same batch; accept if
   L - L_best < loss_tolerance and s > s_best (then s_best, L_best = s, L,
   theta_best = theta, and theta returns to theta0); on rejection the next
   noise adds on top (a random walk);
3. theta = theta_best, then the base algorithm's step.

The search is one compiled loop (`keras.ops.fori_loop`) over explicit
parameter values; the trials evaluate the model and never change its state
(BatchNorm statistics, dropout seeds).

Perturbed variables (`perturb`): "features" (default, as the reference:
every trainable variable but the classifier's, as `kdg.split` finds the
classifier: by default the layer that owns the last trainable variable, or
the one the model names; a model without a split: the variables of the layer
that owns the last trainable variable), "all", or a regular expression
matched against variable paths. Moving statistics are never perturbed.

`temperature > 0` switches to Metropolis acceptance (the paper's simulated
annealing, unused by the reference code): a candidate within the loss
tolerance whose s is lower is still accepted with probability
exp((s - s_best) / T), T = temperature * cooling ** trial.

Logs `gga_cos_before` / `gga_cos_after` (s at the start and at the end of
the search) and `gga_accepted`. Outside the window no search runs: the logs
are still there, with before == after == the base algorithm's
`grad_cos_min` when it computes one, NaN ("not measured") otherwise, and 0
accepted.
"""

import math
import re

from keras import ops

from kdg import rng as kdg_rng
from kdg import split
from kdg.algorithms.base import Algorithm, choice, flatten_domains, integer, number, other
from kdg.ops import cosine_stats


def _is_pattern(text):
    try:
        re.compile(text)
    except re.error:
        return False
    return True


class GGA(Algorithm):
    name = "gga"
    title = "GGA"
    search_space = {
        "rho": {"log_uniform": [-6, -4]},  # reference: 1e-5, 1e-6 on VLCS
        # a choice of mappings sets start_step and end_step together
        "window": {"choice": [
            {"start_step": 100, "end_step": 200},  # the reference
            {"start_step": 0, "end_step": 100},
            {"start_step": 200, "end_step": 300},
            {"start_step": 100, "end_step": 300},
        ]},
    }
    needs_domain_pairs = True
    hparams = {
        "base": other("an algorithm other than GGA (an instance, a name or a config)"),
        "start_step": integer(0),
        "end_step": integer(0),  # and >= start_step
        "rho": number(0, low_open=True),
        "trials": integer(0),
        "loss_tolerance": number(),  # < 0: a trial must lower the loss by that much
        "perturb": other(
            "'features', 'all' or a regular expression matched against variable paths",
            check=lambda value: isinstance(value, str) and _is_pattern(value),
        ),
        "temperature": number(0),  # 0: greedy acceptance
        "cooling": number(0, 1, low_open=True),
        "concat_loss": choice("auto", "separate", "mean"),
    }

    def __init__(
        self,
        base=None,
        start_step=100,
        end_step=200,
        rho=1e-5,
        trials=250,
        loss_tolerance=0.1,
        perturb="features",
        temperature=0.0,
        cooling=0.99,
        concat_loss="auto",
    ):
        self.check_hparams(locals())
        from kdg import algorithms

        try:
            self.base = algorithms.get(base)
        except (TypeError, ValueError) as error:
            allowed = f"an algorithm other than GGA ({str(error).rstrip('.')})"
            raise self.invalid("base", base, allowed) from None
        if isinstance(self.base, GGA):
            raise self.invalid("base", self.base.name)
        if end_step < start_step:
            raise self.invalid("end_step", end_step, f"an integer >= start_step ({start_step})")
        self.start_step = int(start_step)
        self.end_step = int(end_step)
        self.rho = float(rho)
        self.trials = int(trials)
        self.loss_tolerance = float(loss_tolerance)
        self.perturb = perturb
        self.temperature = float(temperature)
        self.cooling = float(cooling)
        self.concat_loss = concat_loss

    def build(self, model):
        self.check_model(model)
        self.base.build(model)

    def check_model(self, model):
        """Raise a ValueError naming `perturb` if the search would have no
        variable of `model` to perturb (a model that is only a classifier head
        has no features). Called when the model is built, before any step."""
        if self.end_step >= 0:
            self.perturbed(model.trainable_variables, model)

    @property
    def variables(self):
        return self.base.variables

    def perturbed(self, variables, model=None):
        """Indices of the variables the search perturbs; a ValueError naming
        `perturb` if there are none."""
        paths = [v.path for v in variables]
        if self.perturb == "all":
            index = list(range(len(paths)))
        elif self.perturb == "features":
            head = paths[-1].rsplit("/", 1)[0] + "/" if paths else ""
            try:  # the model's featurizer / classifier split, shared with the algorithms
                classifier = {id(v) for v in split.classifier_variables(model)}
            except (ValueError, AttributeError):
                classifier = None
            if classifier:
                index = [i for i, v in enumerate(variables) if id(v) not in classifier]
            else:
                index = [i for i, p in enumerate(paths) if not p.startswith(head)]
        else:
            pattern = re.compile(self.perturb)
            index = [i for i, p in enumerate(paths) if pattern.search(p)]
        if index:
            return index
        if not paths:
            raise ValueError("GGA: the model has no trainable variables to perturb.")
        if self.perturb == "features":
            raise ValueError(
                f"GGA perturb='features' (the default) leaves nothing to perturb: "
                f"the features are every trainable variable but the classifier "
                f"head's (layer '{head[:-1]}', which owns the last one), and this "
                f"model has no other. Set perturb='all' to perturb the head too, "
                f"or a regular expression matching some of: {', '.join(paths)}."
            )
        raise ValueError(
            f"GGA perturb={self.perturb!r} matches none of the model's trainable "
            f"variables: {', '.join(paths)}. Set a regular expression that "
            f"matches some of them, or perturb='all'."
        )

    # -- the search ------------------------------------------------------------
    def _search(self, ctx, x, y, index):
        params0 = ctx.params()
        state0 = ctx.state()
        subset0 = [params0[i] for i in index]
        shapes = [tuple(params0[i].shape) for i in index]
        separate = self.concat_loss == "separate" or (
            self.concat_loss == "auto" and ctx.batch_dependent
        )

        def evaluate(subset):
            params = list(params0)
            for i, p in zip(index, subset):
                params[i] = p
            losses, stacked, _, _ = ctx.domain_grads(x, y, params=params, state=state0)
            s = cosine_stats(stacked)[0]
            if separate:
                loss = ctx.loss(flatten_domains(x), flatten_domains(y), params, state0)[0]
            else:
                loss = ops.mean(losses)
            return s, loss

        s0, loss0 = evaluate(subset0)

        def body(trial, carry):
            current, best, s_best, loss_best, accepted = carry
            key = kdg_rng.fold_in(ctx.key, trial)
            noise = kdg_rng.tree_noise(shapes, key, "uniform")
            candidate = [c + self.rho * (2.0 * n - 1.0) for c, n in zip(current, noise)]
            s, loss = evaluate(candidate)
            better = s > s_best
            if self.temperature > 0:
                t = self.temperature * ops.power(self.cooling, ops.cast(trial, "float32"))
                u = kdg_rng.uniform((), kdg_rng.fold_in(key, -1))
                better = ops.logical_or(better, u < ops.exp((s - s_best) / t))
            accept = ops.logical_and(loss - loss_best < self.loss_tolerance, better)
            return (
                [ops.where(accept, c0, c) for c0, c in zip(subset0, candidate)],
                [ops.where(accept, c, b) for c, b in zip(candidate, best)],
                ops.where(accept, s, s_best),
                ops.where(accept, loss, loss_best),
                accepted + ops.cast(accept, "float32"),
            )

        init = (list(subset0), list(subset0), s0, loss0, ops.zeros((), "float32"))
        _, best, s_best, _, accepted = ops.fori_loop(0, self.trials, body, init)
        return list(best), s0, s_best, accepted

    def step(self, ctx, x, y):
        nan = ops.convert_to_tensor(math.nan, "float32")
        zero = ops.zeros((), "float32")
        if self.end_step < 0:
            before, after, accepted = nan, nan, zero
        else:
            index = self.perturbed(ctx.trainable_variables, ctx.model)
            subset = [ctx.trainable_variables[i].value for i in index]
            in_window = ops.logical_and(
                ctx.step_count >= self.start_step, ctx.step_count <= self.end_step
            )
            best, before, after, accepted = ops.cond(
                in_window,
                lambda: self._search(ctx, x, y, index),
                lambda: (subset, nan, nan, zero),
            )
            ctx.assign([ctx.trainable_variables[i] for i in index], best)
        logs, y_pred = self.base.step(ctx, x, y)
        logs = dict(logs)
        if "grad_cos_min" in logs:
            measured = ops.cast(logs["grad_cos_min"], "float32")
            before = ops.where(ops.isnan(before), measured, before)
            after = ops.where(ops.isnan(after), measured, after)
        logs.update(gga_cos_before=before, gga_cos_after=after, gga_accepted=accepted)
        return logs, y_pred

    def get_config(self):
        from kdg import algorithms

        return {
            "base": algorithms.serialize(self.base),
            "start_step": self.start_step,
            "end_step": self.end_step,
            "rho": self.rho,
            "trials": self.trials,
            "loss_tolerance": self.loss_tolerance,
            "perturb": self.perturb,
            "temperature": self.temperature,
            "cooling": self.cooling,
            "concat_loss": self.concat_loss,
        }
