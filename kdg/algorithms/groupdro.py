"""GroupDRO (Sagawa et al., "Distributionally Robust Neural Networks"), as
DomainBed writes it: the domains are the groups.

State: q, one weight per training domain, 1 each at the start (DomainBed
starts from ones, not 1/D; the first normalization makes them a
distribution). Per step, L_d the loss of domain d's minibatch (a forward
pass per domain):

1. q_d <- q_d * exp(eta * L_d) (L_d as a number, no gradient), then
   q <- q / sum(q);
2. loss = sum_d q_d L_d (with the new q), one optimizer step on its
   gradient sum_d q_d grad L_d.

q is the algorithm's variable (saved with the model, restored on resume).
Its size, the number of training domains, is read from the first training
batch (`num_domains=None`), or given; `get_config` records it, so that a
saved model loads with its q. Logs `groupdro_q_max`, the largest weight.
"""

import keras
from keras import ops

from kdg.algorithms.base import Algorithm, domain_count, integer, number


class GroupDRO(Algorithm):
    name = "groupdro"
    title = "GroupDRO"
    hparams = {
        "eta": number(0),  # 0: q stays uniform, ERM's update
        "num_domains": integer(1, optional=True),
    }
    search_space = {"eta": {"log_uniform": [-3, -1]}}

    def __init__(self, eta=1e-2, num_domains=None):
        self.check_hparams(locals())
        self.eta = float(eta)
        self.num_domains = None if num_domains is None else int(num_domains)
        self.q = None

    def build(self, model):
        self.num_domains = domain_count(model, self.num_domains, "GroupDRO")
        self.q = keras.Variable(
            ops.ones((self.num_domains,)), trainable=False, name="groupdro_q"
        )

    @property
    def variables(self):
        return [] if self.q is None else [self.q]

    def step(self, ctx, x, y):
        if y.shape[0] != self.num_domains:
            raise ValueError(
                f"GroupDRO has one weight per training domain ({self.num_domains}); "
                f"the batch has {y.shape[0]} domains. Train on the same domains, "
                f"or make a new GroupDRO."
            )
        losses, stacked, y_pred, state = ctx.domain_grads(x, y)
        q = self.q.value * ops.exp(self.eta * ops.stop_gradient(losses))
        q = q / ops.sum(q)
        ctx.set_state(state)
        ctx.assign([self.q], [q])
        ctx.apply([ops.tensordot(q, g, axes=1) for g in stacked])
        return {"loss": ops.sum(q * losses), "groupdro_q_max": ops.max(q)}, y_pred

    def get_config(self):
        return {"eta": self.eta, "num_domains": self.num_domains}
