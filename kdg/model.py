"""`kdg.DGModel`: a `keras.Model` whose `train_step` runs a domain
generalization algorithm on batches of D per-domain minibatches.

Three ways in:

- functional: ``kdg.DGModel(inputs, outputs, algorithm=kdg.algorithms.Fish())``
- subclassing: ``class Net(kdg.DGModel)`` with its own ``call``
- wrapping a built model: ``kdg.wrap(model, algorithm=...)``

Training batches are ``(x, y)`` with ``x`` of shape ``(D, B, ...)`` and integer
labels ``y`` of shape ``(D, B)``; ``evaluate`` and ``predict`` take ordinary
``(B, ...)`` batches.
"""

import keras
from keras import ops
from keras import tree
from keras.src.models.functional import Functional, functional_from_config

from kdg import algorithms as algorithms_lib
from kdg import backend
from kdg import optimizers  # noqa: F401 (registered, for load_model of a model using them)
from kdg import random as kdg_random
from kdg import split as split_lib
from kdg.algorithms.base import StepContext, flatten_domains

_DG_KEYS = ("algorithm", "freeze_bn", "l2_weight_decay", "seed", "classifier")


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
        classifier: the name of the layer whose input is the features, for
            the algorithms that act on features (`kdg.split`); default: the
            layer that owns the last trainable variable. A subclass gives
            attributes `featurizer` and `classifier` instead.
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
        self._dg_configure(algorithm, freeze_bn, l2_weight_decay, seed, classifier)

    def _dg_configure(self, algorithm=None, freeze_bn=False, l2_weight_decay=0.0,
                      seed=None, classifier=None):
        self.algorithm = algorithms_lib.get(algorithm)
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

    def _symbolic_build(self, iterator=None, data_batch=None):
        if data_batch is None and iterator is not None:
            for _, _, data_or_iterator in iterator:
                if isinstance(data_or_iterator, (list, tuple)):
                    data_batch = data_or_iterator[0]
                else:
                    data_batch = next(data_or_iterator)
                break
        data_batch = self._dg_as_flat_batch(data_batch)
        super()._symbolic_build(data_batch=data_batch)
        self._dg_freeze()
        self._dg_build_algorithm()

    def _dg_as_flat_batch(self, data_batch):
        """Keras builds the model from one batch; a (D, B, ...) training batch
        is shown to it as the (D*B, ...) batch the network really sees."""
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data_batch)
        if y is None or len(getattr(y, "shape", ())) != 2:
            return data_batch
        leaves = tree.flatten(x)
        if not all(len(t.shape) >= 2 and tuple(t.shape[:2]) == tuple(y.shape)
                   for t in leaves):
            if "int" in keras.backend.standardize_dtype(y.dtype) and all(
                len(t.shape) >= 2 and t.shape[0] == y.shape[0] for t in leaves
            ):
                self._dg_check_batch(x, y, sw)  # a (D, B) batch gone wrong
            return data_batch
        # Remembered for pipelines that hide the number of domains (a
        # generator under tf.function has unknown leading dimensions).
        self._dg_num_domains = y.shape[0]
        to_spec = lambda t: keras.KerasTensor(
            (t.shape[0] * t.shape[1],) + tuple(t.shape[2:]),
            keras.backend.standardize_dtype(t.dtype),
        )
        return (tree.map_structure(to_spec, x), to_spec(y))

    # -- training ----------------------------------------------------------
    def _dg_check_batch(self, x, y, sample_weight):
        where = "kdg.DGModel training batch"
        fix = (
            "Training batches must be (x, y) with x of shape (D, B, ...) and "
            "integer labels y of shape (D, B): one minibatch of B examples per "
            "training domain, stacked on the first axis (kdg.data.train_batches "
            "makes them; np.stack a list of per-domain batches does too)."
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
        if len(y_shape) != 2 or any(
            len(s) < 2 or s[:2] != y_shape for s in x_shapes
        ):
            raise ValueError(
                f"{where}: expected x of shape (D, B, ...) and y of shape "
                f"(D, B); got x of shape {', '.join(map(str, x_shapes))} and y "
                f"of shape {y_shape}. {fix}"
            )
        dtype = keras.backend.standardize_dtype(y.dtype)
        if "int" not in dtype:
            raise ValueError(
                f"{where}: labels must be integers (class indices) of shape "
                f"(D, B); got dtype {dtype}. Cast them, e.g. y.astype('int32')."
            )
        if self.algorithm.needs_domain_pairs and y_shape[0] < 2:
            raise ValueError(
                f"{where}: {type(self.algorithm).__name__} compares the "
                f"gradients of pairs of domains and needs at least 2 training "
                f"domains; the batch has D={y_shape[0]}. Train on two or more "
                "domains, or use ERM."
            )

    def _dg_static_domains(self, x, y):
        """Give x and y a static number of domains when the pipeline left it
        unknown: the algorithms unroll over domains."""
        num = getattr(self, "_dg_num_domains", None)
        if y is None or len(y.shape) != 2 or y.shape[0] is not None or num is None:
            return x, y
        fix = lambda t: ops.reshape(t, (num, -1) + tuple(ops.shape(t)[2:]))
        return tree.map_structure(fix, x), fix(y)

    def _dg_train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self._dg_static_domains(x, y)
        self._dg_check_batch(x, y, sample_weight)
        self._dg_freeze()
        self._dg_build_algorithm()
        ctx = StepContext(
            self, kdg_random.key_from_seed_generator(self.dg_seed_generator)
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
