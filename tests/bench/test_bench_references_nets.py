"""The PyTorch references of MTL, SagNet, ARM and MixStyle that `kdg bench`
times (`kdg.bench.torch_reference`, DomainBed's / the MixStyle authors' way of
writing each) against kdg's algorithms on the torch backend: from the same
weights, with kdg's random draws handed to the reference, two steps give the
same weights (the kdg algorithms are themselves checked against independent
references in test_algo_nets.py, test_algo_arm.py and test_algo_more.py).
Also the bench's networks for ARM and MixStyle (`reference.build_network`)."""

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
#: kdg on the torch backend beside plain PyTorch: once per test run, in the torch session
pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="kdg against plain PyTorch: runs in the torch session")

from conftest import make_data, train_steps  # noqa: E402
from two_layer import numpy, step_keys  # noqa: E402

import kdg  # noqa: E402
from kdg.algorithms import ARM, MTL, MixStyle, SagNet  # noqa: E402
from kdg.bench import reference, suite  # noqa: E402
from kdg.bench import torch_reference as ref  # noqa: E402
from kdg.layers import ARMContext  # noqa: E402

nn = torch.nn
LR = 0.01
TOL = dict(rtol=1e-4, atol=2e-5)  # float32 (kdg) against float64 (the reference), Adam
#: Adam's epsilon on both sides: Keras adds it to sqrt(v), PyTorch to sqrt(v / (1 - beta2^t)),
#: which differ for gradients near 1e-5 unless epsilon is negligible
EPS = 1e-12
HP = {"lr": LR, "adam_eps": EPS}
XENT = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tt(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def compiled(model, num_domains=3):
    """Adam (the references' optimizer), the algorithm built before any step."""
    model.num_domains = num_domains
    model.compile(optimizer=keras.optimizers.Adam(LR, epsilon=EPS), loss=XENT)
    model._dg_build_algorithm()
    return model


def assert_close(got, want, step):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"step {step}, weight {i}")


# -- MTL and SagNet: tanh features (6), a linear classifier (4 classes) -------------------

def two_layer(algorithm):
    rng = np.random.default_rng(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = kdg.DGModel(inputs, outputs, algorithm=algorithm, seed=0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return compiled(model)


def torch_two_layer(weights):
    """The same network as a reference Classifier, in float64."""
    net = ref.Classifier(nn.Sequential(nn.Linear(5, 6), nn.Tanh()), nn.Linear(6, 4)).double()
    ref.set_weights_from_numpy(net, [ref.keras_to_torch_layout(w) for w in weights])
    return net


def test_mtl_reference_steps_as_kdg_mtl():
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    model = two_layer(MTL(mtl_ema=0.9))
    w_feat, b_feat, w_head, b_head = model.get_weights()
    w2 = numpy([model.algorithm.w2])[0]
    net = torch_two_layer([w_feat, b_feat, w_head, b_head])
    algo = ref.make_algorithm("MTL", net, {**HP, "mtl_ema": 0.9})
    assert tuple(net.classifier.weight.shape) == (4, 12)  # DomainBed's classifier of [f, e]
    ref.set_weights_from_numpy(net.classifier, [np.concatenate([w_head, w2]).T, b_head])
    noises = [numpy([MTL.noise(k, (3, 8, 6))])[0] for k in step_keys(model, 2)]
    algo.normal_ = lambda embedding, env: tt(noises[algo.step][env])  # kdg's N(0, 1) draws
    for step in range(2):
        want = algo.update(x, y)["loss"]
        logs = train_steps(model, x, y, 1)
        np.testing.assert_allclose(logs["loss"], want, rtol=1e-5, err_msg=f"step {step}")
        wt = ref.get_weights_numpy(net)
        head = wt[2].T  # (12, 4): [W1; W2]
        assert_close(model.get_weights() + numpy([model.algorithm.w2]),
                     [wt[0].T, wt[1], head[:6], wt[3], head[6:]], step)
        np.testing.assert_allclose(numpy([model.algorithm.embeddings])[0],
                                   algo.embeddings.numpy(), **TOL)
    assert np.abs(algo.embeddings.numpy()).min() > 0  # every domain's embedding moved


def test_sagnet_reference_steps_as_kdg_sagnet():
    x, y = make_data(num_domains=3, batch=8, features=5, classes=4)
    model = two_layer(SagNet(sag_w_adv=0.5))
    net = torch_two_layer(model.get_weights())
    algo = ref.make_algorithm("SagNet", net, {**HP, "sag_w_adv": 0.5})
    style = numpy(model.algorithm.style.trainable_variables)
    ref.set_weights_from_numpy(algo.network_s, [style[0].T, style[1]])
    # kdg's (alpha, permutation) of the content, style and adversary steps, in order
    draws = iter([(tt(alpha)[:, None], tt(perm, torch.long))
                  for key in step_keys(model, 2)
                  for alpha, perm in numpy_pairs(SagNet.draws(key, 24))])
    algo.draw = lambda n, like: next(draws)
    for step in range(2):
        want = algo.update(x, y)
        logs = train_steps(model, x, y, 1)
        for key in ("loss", "loss_c", "loss_s", "loss_adv"):
            np.testing.assert_allclose(logs[key], want[key], rtol=1e-5, err_msg=f"{key} {step}")
        wt = ref.get_weights_numpy(net)
        ws = ref.get_weights_numpy(algo.network_s)
        assert_close(model.get_weights() + numpy(model.algorithm.style.trainable_variables),
                     [wt[0].T, wt[1], wt[2].T, wt[3], ws[0].T, ws[1]], step)
    assert next(draws, None) is None  # three randomizations a step, as kdg's
    # the featurizer's Adam stepped twice a step (content and adversary), c's and s's once
    assert algo.optimizer_f.state[algo.network_f[0].weight]["step"] == 4
    assert algo.optimizer_s.state[algo.network_s.weight]["step"] == 2


def numpy_pairs(draws):
    return [tuple(numpy(pair)) for pair in draws]


# -- ARM: a ContextNet (8 channels, 3x3) on 4x4 images, a tanh layer, a linear head --------

SHAPE, HIDDEN, K = (4, 4, 1), 8, 3


def arm_model(num_domains=1):
    inputs = keras.Input(SHAPE)
    h = ARMContext(hidden=HIDDEN, kernel_size=K, name="arm_context")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, activation="tanh", name="features")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = kdg.DGModel(inputs, outputs, algorithm=ARM(), seed=0)
    rng = np.random.default_rng(1)
    for v in model.trainable_variables:
        v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))
    return compiled(model, num_domains=num_domains)


def torch_arm(model):
    """The reference's ARM on the Keras model's weights: its network takes the
    images and the context (C + 1 = 2 channels), flattened as PyTorch does."""
    weights = numpy(model.trainable_variables)
    context, (w_feat, b_feat, w_head, b_head) = weights[:10], weights[10:]
    h, w, c = SHAPE
    w_feat = w_feat.reshape(h, w, c + 1, -1).transpose(2, 0, 1, 3).reshape(h * w * (c + 1), -1)
    net = ref.Classifier(nn.Sequential(nn.Flatten(), nn.Linear(h * w * (c + 1), 5), nn.Tanh()),
                         nn.Linear(5, 3)).double()
    ref.set_weights_from_numpy(net, [w_feat.T, b_feat, w_head.T, b_head])
    algo = ref.make_algorithm("ARM", net, HP)
    algo.context_net = ref.ContextNet(c, HIDDEN, K).double()
    ref.set_weights_from_numpy(algo.context_net, [ref.keras_to_torch_layout(v) for v in context])
    return algo, net


@pytest.mark.parametrize("num_domains", [1, 3])
def test_arm_reference_steps_as_kdg_arm(num_domains):
    """One and three training domains: DomainBed's single pass on the D*B
    images (the ContextNet's BatchNorm over the whole batch, its running
    statistics updated once a step), each domain's minibatch a support set,
    is kdg's step."""
    x, y = make_data(num_domains=num_domains, batch=6, features=16, classes=3)
    x = x.reshape((num_domains, 6) + SHAPE)
    model = arm_model(num_domains)
    algo, net = torch_arm(model)
    context = numpy(model.trainable_variables[:10])
    layer = model.get_layer("arm_context")
    nchw = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))
    for step in range(2):
        want = algo.update(nchw, y)["loss"]
        logs = train_steps(model, x, y, 1)
        np.testing.assert_allclose(logs["loss"], want, rtol=1e-5, err_msg=f"step {step}")
        wt = ref.get_weights_numpy(net)
        w_feat = wt[0].T.reshape(2, 4, 4, 5).transpose(1, 2, 0, 3).reshape(32, 5)
        assert_close(numpy(model.trainable_variables[10:]), [w_feat, wt[1], wt[2].T, wt[3]], step)
        bn = [m for m in algo.context_net.modules() if isinstance(m, nn.BatchNorm2d)]
        stats = numpy([layer.norm1.moving_mean, layer.norm1.moving_variance,
                       layer.norm2.moving_mean, layer.norm2.moving_variance])
        want_stats = [bn[0].running_mean, bn[0].running_var, bn[1].running_mean, bn[1].running_var]
        assert_close(stats, [s.numpy() for s in want_stats], step)
    # DomainBed's quirk on both sides: the context network keeps its initial weights
    assert_close(numpy(model.trainable_variables[:10]), context, "end")
    assert_close([ref.keras_to_torch_layout(v) for v in context],
                 ref.get_weights_numpy(algo.context_net), "end")


def test_arm_reference_appends_each_support_sets_mean_context():
    """D = 3: the context is averaged over each domain's minibatch (the
    support set), the ContextNet's BatchNorm normalizing the whole batch in
    one pass, as DomainBed's ARM.predict: the loss and the gradient the
    reference hands Adam, against the rule written here with PyTorch's
    functional ops."""
    x, y = make_data(num_domains=3, batch=4, features=16, classes=3)
    nchw = np.ascontiguousarray(x.reshape((3, 4) + SHAPE).transpose(0, 1, 4, 2, 3))
    algo, net = torch_arm(arm_model())
    c = [p.detach().clone() for p in algo.context_net.parameters()]
    w = [p.detach().clone().requires_grad_() for p in net.parameters()]
    images = tt(nchw.reshape(12, 1, 4, 4))
    F = torch.nn.functional
    bn = lambda t, g, b: F.batch_norm(t, None, None, g, b, training=True, eps=1e-5)
    h = F.relu(bn(F.conv2d(images, c[0], c[1], padding=1), c[2], c[3]))
    h = F.relu(bn(F.conv2d(h, c[4], c[5], padding=1), c[6], c[7]))
    maps = F.conv2d(h, c[8], c[9], padding=1)  # (12, 1, 4, 4), all images in one pass
    context = maps.reshape(3, 4, 1, 4, 4).mean(1, keepdim=True).expand(3, 4, 1, 4, 4)
    inputs = torch.cat([images, context.reshape(12, 1, 4, 4)], 1).reshape(12, -1)
    logits = torch.tanh(inputs @ w[0].T + w[1]) @ w[2].T + w[3]
    loss = F.cross_entropy(logits, tt(y.reshape(-1), torch.long))
    grads = torch.autograd.grad(loss, w)
    out = algo.update(nchw, y)
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-10)
    for p, g in zip(net.parameters(), grads):
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-9, atol=1e-12)


# -- MixStyle: a 1x1 projection, MixStyle(p=1), ReLU, pooling, a linear head -------------

def test_mixstyle_reference_steps_as_kdg_mixstyle():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(2, 4, 3, 3, 2)) * rng.uniform(0.5, 2, size=(2, 4, 1, 1, 2)))
    x, y = x.astype("float32"), rng.integers(0, 3, size=(2, 4)).astype("int32")
    inputs = keras.Input((3, 3, 2))
    h = keras.layers.Dense(4, use_bias=False, name="proj")(inputs)
    h = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=5, name="ms")(h)
    h = keras.layers.ReLU()(h)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = kdg.DGModel(inputs, outputs, algorithm=MixStyle(), seed=0)
    model.set_weights([rng.normal(scale=0.7, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    model = compiled(model, num_domains=2)
    twin = kdg.layers.MixStyle(p=1.0, alpha=0.3, seed=5)  # the layer's draws, step by step

    layer = ref.MixStyleLayer(p=1.0, alpha=0.3)
    net = ref.Classifier(nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), layer, nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                         nn.Linear(4, 3)).double()
    proj, w_head, b_head = model.get_weights()
    ref.set_weights_from_numpy(net, [proj.T[:, :, None, None], w_head.T, b_head])
    algo = ref.make_algorithm("MixStyle", net, HP)
    calls = []

    def draw(batch_size):
        mix, lam, perm = numpy(twin.draw(batch_size))
        calls.append(batch_size)
        return bool(mix), tt(lam).view(-1, 1, 1, 1), tt(perm, torch.long)

    layer.draw = draw
    nchw = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))
    for step in range(2):
        want = algo.update(nchw, y)["loss"]
        logs = train_steps(model, x, y, 1)
        np.testing.assert_allclose(logs["loss"], want, rtol=1e-5, err_msg=f"step {step}")
        wt = ref.get_weights_numpy(net)
        assert_close(model.get_weights(), [wt[0][:, :, 0, 0].T, wt[1].T, wt[2]], step)
    assert calls == [8, 8]  # one call a step, on ERM's concatenated batch
    with pytest.raises(ValueError, match="MixStyleLayer"):
        ref.make_algorithm("MixStyle", ref.mlp(5, 3))


# -- the bench's networks for them --------------------------------------------------------

def test_bench_builds_mixstyle_after_resnet_stages_1_2_3_and_arm_with_the_context_channel():
    config = suite.scenario("resnet18", algorithms=["mixstyle"], quick=True)
    net = reference.build_network(config, ref, suite.model_options("mixstyle"))
    (layer,) = {m for m in net.modules() if isinstance(m, ref.MixStyleLayer)}
    assert (layer.p, layer.alpha) == (0.5, 0.1)  # the authors' p0d5_a0d1
    mixed, blocks = [], {}
    layer.register_forward_hook(lambda m, args, out: mixed.append(args[0]))
    for i, block in enumerate(net.featurizer.layers):
        block.register_forward_hook(lambda m, args, out, i=i: blocks.update({i: out}))
    net.train()
    net(torch.zeros(2, 3, 32, 32))
    # after layer1, layer2, layer3: the last of ResNet-18's blocks (2, 2, 2, 2) of each
    assert [next(i for i, out in blocks.items() if out is x) for x in mixed] == [1, 3, 5]
    assert [tuple(x.shape[1:]) for x in mixed] == [(64, 8, 8), (128, 4, 4), (256, 2, 2)]
    assert not any(isinstance(m, ref.MixStyleLayer)
                   for m in reference.build_network(config, ref).modules())
    # ARM's context network: DomainBed's (64 channels, 5x5), for the images' C channels
    shapes = [tuple(p.shape) for p in ref.ContextNet(3).parameters()]
    assert shapes == [(64, 3, 5, 5), (64,), (64,), (64,), (64, 64, 5, 5), (64,), (64,), (64,),
                      (1, 64, 5, 5), (1,)]
    for model in ("mnist_cnn", "mlp"):  # (a ResNet's first convolution likewise)
        config = suite.scenario(model, algorithms=["arm"], quick=True)
        plain = reference.build_network(config, ref)
        arm = reference.build_network(config, ref, suite.model_options("arm"))
        # one more input channel: the first layer's weights for it
        size = config["image_size"]
        first_in = {"mnist_cnn": 64 * 3 * 3, "mlp": size * size * 256}[model]
        extra = sum(p.numel() for p in arm.parameters()) - sum(p.numel() for p in plain.parameters())
        assert extra == first_in, model
