"""`kdg.DGModel`: a `keras.Model` whose `train_step` runs a domain
generalization algorithm on batches that hold the examples of D domains.

Three ways in:

- functional: ``kdg.DGModel(inputs, outputs, algorithm=kdg.algorithms.Fish())``
- subclassing: ``class Net(kdg.DGModel)`` with its own ``call``
- wrapping a built model: ``kdg.wrap(model, algorithm=...)``

Training batches are ordinary Keras batches ``(x, y)``: ``x`` of shape
``(N, ...)``, integer labels ``y`` of shape ``(N,)``, the N = D*B examples of
the D training domains laid out domain-minor (example b of domain d at index
``b*D + d``; `kdg.layout`, `kdg.data.interleave_domains`). The model knows D
(``num_domains``); its step views the batch as (D, B, ...) for the algorithm.
``evaluate`` and ``predict`` take ordinary batches of any examples.
"""

import sys

import keras
from keras import ops
from keras import tree
from keras.src.models.functional import Functional, functional_from_config

from kdg import algorithms as algorithms_lib
from kdg import backend
from kdg import layout
from kdg import optimizers  # noqa: F401 (registered, for load_model of a model using them)
from kdg import rng as kdg_rng
from kdg import split as split_lib
from kdg.algorithms.base import StepContext, flatten_domains

_DG_KEYS = ("algorithm", "freeze_bn", "l2_weight_decay", "seed", "num_domains", "classifier")


def _is_functional_call(args, kwargs):
    return (len(args) == 2) or (len(args) == 1 and "outputs" in kwargs) or (
        "inputs" in kwargs and "outputs" in kwargs
    )


def _freeze_batchnorm(layer):
    """Run a BatchNormalization layer in inference mode (moving statistics
    used and never updated) while its gamma and beta stay trainable, as
    DomainBed's ``freeze_bn`` (``module.eval()``) does.

    Keras 3.15 has no supported switch for this. ``layer.trainable = False``
    runs BatchNorm in inference mode but also takes gamma and beta out of
    ``trainable_variables``; a subclass swapped in would need the model's
    graph rebuilt, which a wrapped model (a keras-hub classifier, say) does
    not allow. So the instance's ``call`` is replaced by one that passes
    ``training=False``: Keras' ``Layer.__call__`` calls ``self.call``, and the
    layer's config, weights and saved files stay those of a plain
    BatchNormalization (``freeze_bn`` is the model's setting, applied again
    when the model is built). tests/test_keras_contract.py fails if Keras
    changes what this relies on."""
    if _is_frozen(layer):
        return
    call = layer.call

    def frozen_call(inputs, training=None, mask=None):
        return call(inputs, training=False, mask=mask)

    frozen_call.kdg_frozen = True
    layer.call = frozen_call


def _is_frozen(layer):
    return getattr(layer.call, "kdg_frozen", False)


@keras.saving.register_keras_serializable(package="kdg")
class DGModel(backend.TrainStep, keras.Model):
    """A Keras model trained with a domain generalization algorithm.

    Args:
        algorithm: a `kdg.algorithms.Algorithm`, its name ("fish") or its
            serialized config; default `ERM()`.
        freeze_bn: run every BatchNormalization layer in inference mode during
            training (moving statistics fixed, gamma and beta trained).
        l2_weight_decay: L2 penalty added to the gradient before each
            optimizer step, as PyTorch's Adam `weight_decay` does (coupled);
            Keras' optimizers' own `weight_decay` is the decoupled kind.
        seed: seed of the model's `keras.random.SeedGenerator`, the source of
            the algorithms' randomness.
        num_domains: D, the number of training domains in each training
            batch (see the module's docstring for the layout). Also settable
            as ``model.num_domains``; `fit` takes it from kdg's training
            batches (`kdg.data.domain_batches`, `DGDataset.train_batches`)
            when the model has none. Saved in the model's config.
        classifier: the name of the layer whose input is the features, for
            the algorithms that act on features (`kdg.split`); default: the
            layer that owns the last trainable variable. A subclass gives
            attributes `featurizer` and `classifier` instead.

    Training batches are ``(x, y)`` with ``x`` of shape ``(D*B, ...)`` and
    integer labels ``y`` of shape ``(D*B,)``, example b of domain d at index
    ``b*D + d``: `kdg.data.interleave_domains(per_domain)` builds one from D
    per-domain minibatches. ``evaluate`` and ``predict`` take any batches.
    """

    def __new__(cls, *args, **kwargs):
        if cls is DGModel and _is_functional_call(args, kwargs):
            cls = FunctionalDGModel
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args,
        algorithm=None,
        freeze_bn=False,
        l2_weight_decay=0.0,
        seed=None,
        num_domains=None,
        classifier=None,
        **kwargs,
    ):
        if _is_functional_call(args, kwargs) and not isinstance(self, Functional):
            raise TypeError(
                f"{type(self).__name__} subclasses kdg.DGModel and was given "
                "inputs and outputs. To build a functional model in a "
                "subclass, inherit from kdg.FunctionalDGModel instead."
            )
        # kdg's step counter (GGA's window, Fish's warm-up) is set past
        # Keras' attribute tracking (and torch.nn.Module's), so that `weights`
        # is the network's own list: `set_weights` and the weight files of a
        # plain `keras.Model` fit. `variables` adds it back (training,
        # checkpoints, JAX's stateless state) and `save_own_variables` saves
        # it. Set before Keras' __init__, which builds a functional model.
        object.__setattr__(self, "_dg_step", keras.Variable(
            0, dtype="int32", trainable=False, name="dg_step"
        ))
        super().__init__(*args, **kwargs)
        self.dg_seed_generator = keras.random.SeedGenerator(
            seed, name="dg_seed_generator"
        )
        # The model's own loss tracker, as in Keras' guides to custom training
        # steps: a tracked metric, so `metrics` lists it and `reset_metrics`
        # resets it; the training step and `evaluate` update it.
        self.dg_loss_tracker = keras.metrics.Mean(name="loss")
        self._dg_algorithm_built = False
        self._dg_pending_algorithm_values = None
        self._dg_configure(algorithm, freeze_bn, l2_weight_decay, seed, num_domains,
                           classifier)

    def _dg_configure(self, algorithm=None, freeze_bn=False, l2_weight_decay=0.0,
                      seed=None, num_domains=None, classifier=None):
        self.algorithm = algorithms_lib.get(algorithm)
        self.num_domains = num_domains
        if classifier is not None and not isinstance(classifier, str):
            raise TypeError(
                f"classifier names the classifier layer (a string); got {classifier!r}. "
                "A subclass gives attributes `featurizer` and `classifier` instead."
            )
        self.dg_classifier = classifier
        object.__setattr__(self, "_dg_split", None)
        self.freeze_bn = bool(freeze_bn)
        self.l2_weight_decay = float(l2_weight_decay)
        self.seed = seed
        if seed is not None:
            self.dg_seed_generator.state.assign(
                ops.cast(ops.convert_to_tensor([seed, 0]),
                         self.dg_seed_generator.state.dtype)
            )

    # -- the number of domains -------------------------------------------------
    @property
    def num_domains(self):
        """D, the number of training domains in each training batch (None
        until it is set, or taken by `fit` from kdg's training batches)."""
        return getattr(self, "_dg_num_domains", None)

    @num_domains.setter
    def num_domains(self, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"num_domains must be a positive integer or None; got {value!r}.")
        if value != self.num_domains and getattr(self, "train_function", None) is not None:
            self.train_function = None  # traced for another D
        object.__setattr__(self, "_dg_num_domains", value)

    def _dg_require_num_domains(self):
        if self.num_domains is None:
            raise ValueError(
                "kdg.DGModel: the model does not know how many training domains each "
                "training batch holds. Set it: kdg.DGModel(..., num_domains=D), "
                "kdg.wrap(model, num_domains=D) or model.num_domains = D; or train with "
                "model.fit on kdg's training batches (kdg.data.domain_batches, "
                "DGDataset.train_batches), which carry it.")
        return self.num_domains

    # -- state -------------------------------------------------------------
    @property
    def dg_step(self):
        """The number of training steps taken (an int32 variable): in
        `variables` and saved with the model, not in `weights`."""
        return self._dg_step

    @property
    def variables(self):
        return [self.dg_step] + super().variables

    @property
    def metrics(self):
        """Keras' metrics, with the model's own loss tracker (`dg_loss_tracker`)
        first in place of the one `compile()` makes, which has the same name
        and which kdg's steps do not update (one `loss` in the logs)."""
        own = getattr(self, "dg_loss_tracker", None)  # None inside Keras' __init__
        if own is None:
            return super().metrics
        return [own] + [m for m in super().metrics if m is not own and m.name != own.name]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss; `evaluate` (``training=False``) also counts it in the
        model's loss tracker, weighted by the batch size as Keras does. The
        training step counts its own loss itself."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training and loss is not None:
            size = ops.shape(next(t for t in tree.flatten(x) if t is not None))[0]
            self.dg_loss_tracker.update_state(loss, sample_weight=size)
        return loss

    @property
    def dg_split(self):
        """The model's featurizer / classifier split (`kdg.split.Split`),
        found once; a ValueError saying how to name it if there is none."""
        if self._dg_split is None:
            object.__setattr__(self, "_dg_split", split_lib.find(self))
        return self._dg_split

    def _dg_model_state_variables(self):
        return super().non_trainable_variables

    @property
    def non_trainable_variables(self):
        # The algorithm's own state (e.g. Fish's inner optimizer) travels with
        # the model's, so that JAX's stateless train step carries it.
        variables = super().non_trainable_variables
        if getattr(self, "_dg_algorithm_built", False):
            variables = variables + list(self.algorithm.variables)
        return variables

    def _dg_build_algorithm(self):
        if self._dg_algorithm_built or not self.built:
            return
        self.algorithm.build(self)
        self._dg_algorithm_built = True
        if self._dg_pending_algorithm_values is not None:
            for v, value in zip(
                self.algorithm.variables, self._dg_pending_algorithm_values
            ):
                v.assign(value)
            self._dg_pending_algorithm_values = None

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["dg_step"] = keras.ops.convert_to_numpy(self.dg_step)
        # Keras saves no SeedGenerator; the algorithms' draws continue from it
        store["dg_seed"] = keras.ops.convert_to_numpy(self.dg_seed_generator.state)
        if self._dg_algorithm_built:
            for i, v in enumerate(self.algorithm.variables):
                store[f"algorithm_{i}"] = keras.ops.convert_to_numpy(v)

    def load_own_variables(self, store):
        keys = [k for k in store.keys() if k.startswith("algorithm_")]
        values = [store[f"algorithm_{i}"] for i in range(len(keys))]
        own = [store[k] for k in sorted(
            (k for k in store.keys() if k.isdigit()), key=int)]
        step = store["dg_step"] if "dg_step" in store.keys() else None
        if "dg_seed" in store.keys():
            self.dg_seed_generator.state.assign(store["dg_seed"])
        mine = {}  # what Keras saves of the model's own variables, counted
        super().save_own_variables(mine)
        expected = len(mine)
        if step is None and len(own) == expected + 1:
            step, own = own[0], own[1:]  # saved by kdg 0.1.0: the counter first
        super().load_own_variables({str(i): v for i, v in enumerate(own)})
        if step is not None:  # a plain keras.Model's weights file has none
            self.dg_step.assign(step)
        values = [keras.ops.convert_to_numpy(v) for v in values]
        if values and self._dg_algorithm_built:
            for v, value in zip(self.algorithm.variables, values):
                v.assign(value)
        elif values:  # assigned when the algorithm is built
            self._dg_pending_algorithm_values = values

    def _dg_batch_dependent(self):
        """True if a layer computes statistics across the batch in training
        (BatchNorm not frozen), or mixes its examples (a layer whose
        ``mixes_batch`` is true, kdg.layers.MixStyle): then a concatenated
        batch is not the mean of its per-domain parts."""
        return any(
            (isinstance(layer, keras.layers.BatchNormalization)
             and layer.trainable
             and not _is_frozen(layer))
            or getattr(layer, "mixes_batch", False) is True
            for layer in self._flatten_layers(include_self=False)
        )

    def _dg_freeze(self):
        if self.freeze_bn:
            for layer in self._flatten_layers(include_self=False):
                if isinstance(layer, keras.layers.BatchNormalization):
                    _freeze_batchnorm(layer)

    # -- building ----------------------------------------------------------
    def compile_from_config(self, config):
        super().compile_from_config(config)
        # the algorithm's own variables must exist before weights load
        self._dg_build_algorithm()

    def make_train_function(self, force=False):
        """Keras' `make_train_function`, after building what the step needs
        and Keras does not know of: BatchNorm frozen (`freeze_bn`), the
        algorithm's own variables (JAX collects its state, and TensorFlow
        traces the step, after this) and the optimizer's (without a
        distribution strategy Keras' TensorFlow trainer leaves that to the
        first trace, and a trace that creates variables runs twice)."""
        self._dg_require_num_domains()
        self._dg_freeze()
        self._dg_build_algorithm()
        if self.built and self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def train_on_batch(self, x, y=None, sample_weight=None, *args, **kwargs):
        """Keras' `train_on_batch`, the batch checked first (a stacked
        (D, B, ...) batch is named as such, before Keras reads its shape)."""
        self._dg_check_batch(x, y, sample_weight)
        return super().train_on_batch(x, y, sample_weight, *args, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras' `fit`. Training data that knows its number of domains
        (kdg's training batches: `kdg.data.domain_batches`,
        `DGDataset.train_batches`) sets the model's `num_domains` if it has
        none, and is refused if the model has another; such batches can be
        given to `fit` as they are."""
        given = getattr(x, "num_domains", None)
        if given is not None:
            if self.num_domains is None:
                self.num_domains = given
            elif self.num_domains != given:
                raise ValueError(
                    f"kdg.DGModel.fit: the training batches hold {given} domains, the model "
                    f"was set to num_domains={self.num_domains}. Build the batches from "
                    f"{self.num_domains} domains, or set model.num_domains = {given}.")
        pipeline = sys.modules.get("kdg.data.pipeline")
        if pipeline is not None and isinstance(x, pipeline.Batches):
            if not args:  # shuffled already, in the pipeline (Keras warns otherwise)
                kwargs.setdefault("shuffle", False)
            with x.naming_bad_images():  # a bad image named, not a TensorFlow error
                return super().fit(x.dataset, y, *args, **kwargs)
        return super().fit(x, y, *args, **kwargs)

    # -- training ----------------------------------------------------------
    def _dg_check_batch(self, x, y, sample_weight):
        where = "kdg.DGModel training batch"
        num = self._dg_require_num_domains()
        fix = (
            "Training batches are ordinary (x, y) batches: x of shape (N, ...) and integer "
            f"labels y of shape (N,), N = D*B examples of the model's num_domains D={num} "
            "domains, example b of domain d at index b*D + d. kdg.data.interleave_domains "
            "builds one from D per-domain minibatches (or a stacked (D, B, ...) array); "
            "kdg.data.domain_batches makes a stream of them."
        )
        if y is None:
            raise ValueError(f"{where}: no labels were given. {fix}")
        if sample_weight is not None:
            raise ValueError(
                f"{where}: sample weights are not supported by the domain "
                "generalization algorithms (every domain's loss is a mean)."
            )
        y_shape = tuple(y.shape)
        x_shapes = [tuple(t.shape) for t in tree.flatten(x)]
        if len(y_shape) != 1 or any(len(s) < 1 or s[0] != y_shape[0] for s in x_shapes):
            raise ValueError(
                f"{where}: expected x of shape (N, ...) and y of shape (N,); got x of "
                f"shape {', '.join(map(str, x_shapes))} and y of shape {y_shape}. {fix}"
            )
        if y_shape[0] is not None and y_shape[0] % num:
            raise ValueError(
                f"{where}: {y_shape[0]} examples do not divide into num_domains={num} "
                f"domains of equal size (N must be a multiple of D). {fix}"
            )
        dtype = keras.backend.standardize_dtype(y.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"{where}: labels must be integers (class indices) of shape "
                f"(N,); got dtype {dtype}. Cast them, e.g. y.astype('int32')."
            )
        if self.algorithm.needs_domain_pairs and num < 2:
            raise ValueError(
                f"{where}: {type(self.algorithm).__name__} compares the "
                f"gradients of pairs of domains and needs at least 2 training "
                f"domains; the model has num_domains={num}. Train on two or more "
                "domains, or use ERM."
            )

    def _dg_train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._dg_check_batch(x, y, sample_weight)
        if not self.built:
            # A subclassed model not built yet: Keras' TensorFlow trainer
            # builds none before it traces the step (Keras' own train_step
            # builds it by calling it; the algorithms' stateless calls need
            # it built). JAX and PyTorch build it from the batch beforehand.
            self(x, training=False)
        self._dg_freeze()
        self._dg_build_algorithm()
        # the algorithms' view: (N, ...) -> (D, B, ...), as kdg.layout lays it out
        num = self.num_domains
        x, y = tree.map_structure(lambda t: layout._split(t, num, ops), (x, y))
        ctx = StepContext(
            self, kdg_rng.key_from_seed_generator(self.dg_seed_generator)
        )
        logs, y_pred = self.algorithm.step(ctx, x, y)
        self.dg_step.assign_add(1)
        logs = dict(logs)
        loss = logs.pop("loss")
        y_flat = flatten_domains(y)
        self.dg_loss_tracker.update_state(loss, sample_weight=ops.shape(y_flat)[0])
        results = self.compute_metrics(flatten_domains(x), y_flat, y_pred)
        results.update({k: ops.cast(v, "float32") for k, v in logs.items()})
        return results

    # -- config ------------------------------------------------------------
    def get_config(self):
        try:
            config = super().get_config()
        except NotImplementedError:
            config = {"name": self.name, "trainable": self.trainable}
        config.update(
            algorithm=algorithms_lib.serialize(self.algorithm),
            freeze_bn=self.freeze_bn,
            l2_weight_decay=self.l2_weight_decay,
            seed=self.seed,
            num_domains=self.num_domains,
        )
        if self.dg_classifier is not None:
            config["classifier"] = self.dg_classifier
        return config


@keras.saving.register_keras_serializable(package="kdg")
class FunctionalDGModel(DGModel, Functional):
    """The functional form, `kdg.DGModel(inputs, outputs, ...)`; subclass it
    to build a functional model in your own class."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        dg = {k: config.pop(k) for k in _DG_KEYS if k in config}
        model = functional_from_config(cls, config, custom_objects=custom_objects)
        model._dg_configure(**dg)
        return model


@keras.saving.register_keras_serializable(package="kdg")
class WrappedDGModel(DGModel):
    """An existing, built Keras model trained by a kdg algorithm, unchanged:
    its layers and weights are shared, not copied."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        if model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.model)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


def wrap(model, algorithm=None, **kwargs):
    """Train an existing, built `keras.Model` (a keras-hub classifier, say)
    with a kdg algorithm, without rewriting it. Returns a `DGModel` sharing
    the model's layers and weights."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"kdg.wrap expects a keras.Model; got {type(model).__name__}.")
    return WrappedDGModel(model, algorithm=algorithm, **kwargs)
