"""GGA-L, the light variant of gradient-guided annealing (Ballas & Diou).

Every step:
1. per-domain gradients g_d; s_mean = mean over pairs i<j of cos(g_i, g_j);
2. the gradient of the concatenated-batch loss plus noise,
   grad + gamma * (1 - s_mean) * xi, fresh xi per element: N(0, 1) as the
   reference code draws it (`noise="gaussian"`), or U(0, 1) as the paper and
   its README write it (`noise="uniform"`);
3. one optimizer step.

The concatenated-batch gradient equals the mean of the g_d when every
domain has B examples, the loss is a mean and no layer mixes examples of a
batch (BatchNorm in training mode). `concat_grad="auto"` then reuses the g_d
instead of a second pass; "separate" always makes the pass, "mean" never.
"""

from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms.base import Algorithm, choice, flatten_domains, number
from kdg.ops import cosine_stats

NOISES = {"gaussian": "normal", "uniform": "uniform"}


class GGAL(Algorithm):
    name = "ggal"
    title = "GGA-L"
    search_space = {"gamma": {"log_uniform": [-4, -2]}}  # reference 1e-3
    needs_domain_pairs = True
    hparams = {
        "gamma": number(0),  # 0: no noise, ERM's update
        "noise": choice(*NOISES),
        "concat_grad": choice("auto", "separate", "mean"),
    }

    def __init__(self, gamma=1e-3, noise="gaussian", concat_grad="auto"):
        self.check_hparams(locals())
        self.gamma = float(gamma)
        self.noise = noise
        self.concat_grad = concat_grad

    def step(self, ctx, x, y):
        losses, stacked, y_pred, state = ctx.domain_grads(x, y)
        cos_min, cos_mean = cosine_stats(stacked)
        separate = self.concat_grad == "separate" or (
            self.concat_grad == "auto" and ctx.batch_dependent
        )
        if separate:
            loss, grads, y_pred, state = ctx.loss_and_grads(
                flatten_domains(x), flatten_domains(y), state=state
            )
        else:
            loss = ops.mean(losses)
            grads = [ops.mean(g, axis=0) for g in stacked]
        ctx.set_state(state)
        xi = kdg_rng.tree_noise(
            [v.shape for v in ctx.trainable_variables], ctx.key, NOISES[self.noise]
        )
        scale = self.gamma * (1.0 - cos_mean)
        ctx.apply([g + scale * n for g, n in zip(grads, xi)])
        return {"loss": loss, "grad_cos_min": cos_min, "grad_cos_mean": cos_mean}, y_pred

    def get_config(self):
        return {"gamma": self.gamma, "noise": self.noise, "concat_grad": self.concat_grad}
