"""ARM, adaptive risk minimization (Zhang et al., *Adaptive Risk
Minimization: Learning to Adapt to Domain Shift*), its contextual
meta-learning variant ARM-CML as DomainBed's `ARM`.

The model carries a `kdg.layers.ARMContext` at its input: a context network
maps each image to a one-channel map, the maps are averaged over a *support
set* and the mean is appended to every image of the set as an extra channel
before the featurizer. The support set is the batch the layer is called on:

- training: DomainBed's ``support_size`` is the per-domain batch size, so
  each domain's minibatch is one support set. Per step, DomainBed's
  ``ARM.update`` (ERM's update): ONE forward pass on the D domains'
  concatenated minibatches (D*B examples; the context network's BatchNorm,
  and the featurizer's, normalize the whole batch and update their moving
  statistics once), the context averaged over each domain's B images
  (`ARMContext.support_sets`), and

      loss = (1/(D*B)) sum_{d,b} CE(model(x)_{d,b}, y_{d,b})

  with one step of the model's optimizer.
- evaluation (``evaluate`` / ``predict``): each evaluation batch is one
  support set (DomainBed cuts its evaluation batches of 64 into support sets
  of ``batch_size``; set kdg's ``eval_batch_size`` to the training
  ``batch_size`` for the same support sets).

DomainBed's quirk, followed by default: the context network is never trained
(DomainBed's optimizer is created before the context network exists, so its
weights keep their initial values): its weights stay trainable Keras
variables (gradients flow through them, as in DomainBed) but the step
applies the optimizer, and the weight decay, to the other variables only;
its BatchNorm layers still run in training mode and update their moving
statistics. ``train_context=True``
trains it with the rest of the model (the paper's ARM-CML).
"""

import contextlib

from kdg.algorithms import own
from kdg.algorithms.base import Algorithm, flag, flatten_domains


class ARM(Algorithm):
    name = "arm"
    title = "ARM"
    hparams = {"train_context": flag()}
    #: DomainBed's ARM has no hyperparameters of its own to search.
    search_space = {}

    def __init__(self, train_context=False):
        """train_context: train the context network too (the paper's
        ARM-CML); False (default) keeps its initial weights, as DomainBed."""
        self.check_hparams(locals())
        self.train_context = bool(train_context)

    def build(self, model):
        from kdg.layers import ARMContext, find_layers

        layers = find_layers(model, ARMContext)
        if not layers:
            raise ValueError(
                "ARM needs a kdg.layers.ARMContext at the model's input (the context "
                "network), and this model has none. Build the model with "
                "kdg.models.build(..., arm_context=True) (in a recipe: model: "
                "{arm_context: true}), or put kdg.layers.ARMContext() on your images "
                "before your network."
            )
        self._layers = layers
        self._context_ids = {id(v) for layer in layers for v in layer.trainable_variables}

    def step(self, ctx, x, y):
        # one pass on the (D*B, ...) batch, each domain's B images a support set
        with contextlib.ExitStack() as sets:
            for layer in self._layers:
                sets.enter_context(layer.support_sets(x.shape[0]))
            loss, grads, y_pred, state = ctx.loss_and_grads(
                flatten_domains(x), flatten_domains(y))
        ctx.set_state(state)
        if self.train_context:
            ctx.apply(grads)
        else:  # DomainBed's optimizer never sees the context network
            keep = [i for i, v in enumerate(ctx.trainable_variables)
                    if id(v) not in self._context_ids]
            own.apply(ctx.model, ctx.optimizer, [grads[i] for i in keep],
                      [ctx.trainable_variables[i] for i in keep])
        return {"loss": loss}, y_pred

    def get_config(self):
        return {"train_context": self.train_context}
