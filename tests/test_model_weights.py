"""A DGModel's weights are its network's: the same list as the plain
keras.Model built the same way, so that weights move between them, while
kdg's step counter is still saved, restored and resumed."""

import zipfile

import h5py
import keras
import numpy as np
import pytest
from conftest import domain_batch, make_data

import kdg
from kdg import training
from kdg.algorithms import GGA

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def network(cls, **kwargs):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="relu", name="features")(inputs)
    hidden = keras.layers.BatchNormalization(name="norm")(hidden)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    return cls(inputs, outputs, **kwargs)


def random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()]


def test_weights_are_the_plain_models():
    plain, dg = network(keras.Model), network(kdg.DGModel)
    assert [w.path for w in dg.weights] == [w.path for w in plain.weights]
    assert [tuple(w.shape) for w in dg.weights] == [tuple(w.shape) for w in plain.weights]
    assert [w.path for w in dg.trainable_weights] == [w.path for w in plain.trainable_weights]
    assert [w.path for w in dg.non_trainable_weights] == [
        w.path for w in plain.non_trainable_weights]
    # the counter is still model state
    assert dg.dg_step in dg.variables and dg.dg_step in dg.non_trainable_variables


def test_wrapped_model_has_the_wrapped_weights():
    plain = network(keras.Model)
    assert [w.path for w in kdg.wrap(plain).weights] == [w.path for w in plain.weights]


def test_set_weights_from_a_plain_model():
    plain, dg = network(keras.Model), network(kdg.DGModel)
    plain.set_weights(random_weights(plain))
    dg.set_weights(plain.get_weights())
    for got, want in zip(dg.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_load_a_plain_models_weights_file(tmp_path):
    plain = network(keras.Model)
    plain.set_weights(random_weights(plain, seed=1))
    plain.save_weights(tmp_path / "plain.weights.h5")
    dg = network(kdg.DGModel, algorithm=GGA(start_step=0, end_step=5, trials=2))
    dg.compile(optimizer="adam", loss=LOSS)
    dg.load_weights(tmp_path / "plain.weights.h5")
    for got, want in zip(dg.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(keras.ops.convert_to_numpy(dg.dg_step)) == 0


def trained(steps, **kwargs):
    x, y = make_data()
    model = network(kdg.DGModel, algorithm=GGA(start_step=2, end_step=3, trials=3), seed=3,
                    num_domains=3, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    if steps:
        model.fit((domain_batch(x, y) for _ in range(steps)), steps_per_epoch=steps, epochs=1, verbose=0)
    return model, x, y


def test_save_and_load_model_keep_the_step_counter(tmp_path):
    """GGA's window is counted in steps: a reloaded model continues the count
    and searches in the same steps as the original."""
    model, x, y = trained(2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(keras.ops.convert_to_numpy(loaded.dg_step)) == 2
    logs = {}
    for m in (model, loaded):
        history = m.fit((domain_batch(x, y) for _ in range(3)), steps_per_epoch=1, epochs=3, verbose=0)
        logs[id(m)] = history.history["gga_accepted"]
    # steps 2 and 3 search, step 4 is past the window: on both
    assert logs[id(model)] == logs[id(loaded)]
    assert logs[id(model)][2] == 0
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_weights_file_keeps_the_step_counter(tmp_path):
    model, _, _ = trained(3)
    model.save_weights(tmp_path / "dg.weights.h5")
    fresh, _, _ = trained(0)
    fresh.load_weights(tmp_path / "dg.weights.h5")
    assert int(keras.ops.convert_to_numpy(fresh.dg_step)) == 3
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_checkpoint_holds_the_step_counter(tmp_path):
    model, _, _ = trained(3)
    training.save_checkpoint(model, tmp_path / "c.npz", step=3)
    fresh, _, _ = trained(0)
    fresh.optimizer.build(fresh.trainable_variables)
    training.load_checkpoint(fresh, tmp_path / "c.npz")
    assert int(keras.ops.convert_to_numpy(fresh.dg_step)) == 3
    for a, b in zip(training.state_variables(model), training.state_variables(fresh)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_model_saved_with_the_counter_among_its_variables_loads(tmp_path):
    """kdg 0.1.0 saved the counter as the model's first own variable."""
    model, _, _ = trained(2)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        z.extractall(tmp_path / "unzipped")
    with h5py.File(tmp_path / "unzipped" / "model.weights.h5", "r+") as f:
        own = f["vars"]
        step = own["dg_step"][()]
        del own["dg_step"]
        own.create_dataset("0", data=step)
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as z:
        for name in ("config.json", "metadata.json", "model.weights.h5"):
            z.write(tmp_path / "unzipped" / name, name)
    loaded = keras.models.load_model(tmp_path / "old.keras")
    assert int(keras.ops.convert_to_numpy(loaded.dg_step)) == 2


# -- GGA on a model without features -------------------------------------------


def head_only(algorithm):
    inputs = keras.Input((5,))
    model = kdg.DGModel(inputs, keras.layers.Dense(4, name="head")(inputs),
                        algorithm=algorithm, num_domains=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    return model


def test_gga_refuses_a_model_without_features_before_any_step():
    """perturb='features' (the default) leaves out the classifier head; a
    model that is only a head has nothing to perturb: say so, do not train."""
    model = head_only(GGA(start_step=0, end_step=5, trials=3))
    before = model.get_weights()
    x, y = make_data()
    with pytest.raises(ValueError) as error:
        model.fit((domain_batch(x, y) for _ in range(2)), steps_per_epoch=2, epochs=1, verbose=0)
    message = str(error.value)
    assert "perturb='features'" in message and "perturb='all'" in message
    assert "'head'" in message
    assert int(keras.ops.convert_to_numpy(model.dg_step)) == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_gga_check_model_names_the_variables():
    model = network(kdg.DGModel)
    GGA().check_model(model)  # features/*, norm/gamma, norm/beta
    GGA(perturb="all").check_model(head_only("erm"))
    with pytest.raises(ValueError, match=r"perturb='conv' matches none .*features/kernel"):
        GGA(perturb="conv").check_model(model)
    with pytest.raises(ValueError, match="perturb='features'"):
        GGA().check_model(head_only("erm"))
    with pytest.raises(ValueError, match="perturb='features'"):  # when the model is built
        GGA().build(head_only("erm"))


def test_gga_on_a_head_only_model_trains_with_perturb_all():
    model = head_only(GGA(start_step=0, end_step=1, trials=2, rho=0.1, perturb="all"))
    x, y = make_data()
    history = model.fit((domain_batch(x, y) for _ in range(2)), steps_per_epoch=2, epochs=1, verbose=0)
    assert not np.isnan(history.history["gga_cos_after"][0])
