"""What algorithms that train networks of their own (MTL's embedding
weights, SagNet's style network, ARM's context network) share: an optimizer
like the model's, and its update with the model's weight decay.

DomainBed gives each such network an Adam with the run's lr and
weight_decay (SagNet: one per network; MTL and ARM: the same Adam as the
model's, whose per-parameter updates are those of separate Adams). kdg
copies the model's compiled optimizer (its class and config: lr, schedule,
betas, ...), so the own networks follow the recipe's optimizer.
"""


def copy_optimizer(model, variables):
    """A new optimizer of the model's class and config, built for `variables`."""
    source = model.optimizer
    if source is None:
        raise ValueError("Compile the model (model.compile(optimizer=...)) before training it.")
    optimizer = type(source).from_config(source.get_config())
    optimizer.build(variables)
    return optimizer


def apply(model, optimizer, grads, variables):
    """One step of `optimizer` on an algorithm's own `variables`, the model's
    `l2_weight_decay` added to the gradient as `StepContext.apply` adds it."""
    wd = model.l2_weight_decay
    if wd:
        grads = [g + wd * v.value for g, v in zip(grads, variables)]
    optimizer.apply(grads, variables)


def values(variables):
    """The current values of variables (for a stateless computation)."""
    return [v.value for v in variables]


def feature_dim(model):
    """The featurizer's output size (the split's features, (N, F))."""
    try:
        shape = tuple(model.dg_split.featurizer.output.shape)
    except (AttributeError, ValueError):
        shape = None
    if shape is None or len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"{type(model).__name__} '{model.name}': this algorithm needs flat features "
            f"(N, F) from the featurizer; got shape {shape}.")
    return int(shape[-1])


