"""MixStyle (Zhou et al., *Domain Generalization with MixStyle*, ICLR 2021):
ERM on a network with `kdg.layers.MixStyle` layers.

The rule lives in the layers: in training, with probability p per batch,
each example's channel statistics after an early ResNet stage are replaced
by a Beta(alpha, alpha) mix of its own and a random other example's (see
`kdg.layers.MixStyle`); evaluation runs the plain network. The MixStyle code
used with DomainBed (``resnet50_mixstyle_L234_p0d5_a0d1``: mixing after
stages 1, 2 and 3, p = 0.5, alpha = 0.1, random shuffling of the whole
batch, i.e. across domains) is ``kdg.models.build("resnet50", ...,
mixstyle_layers=(1, 2, 3))``, in a recipe ``model: {backbone: resnet50,
mixstyle_layers: [1, 2, 3]}``. The training step is ERM's: the batch's D
domains are one (D*B, ...) batch, so the permutation mixes examples of
different domains.

The algorithm only checks that the model has MixStyle layers (a model
without them would silently train ERM).
"""

from kdg.algorithms.erm import ERM


class MixStyle(ERM):
    name = "mixstyle"
    title = "MixStyle"
    hparams = {}
    #: DomainBed-style repositories fix p and alpha (no search).
    search_space = {}

    def __init__(self):
        self.check_hparams(locals())

    def build(self, model):
        from kdg.layers import MixStyle as MixStyleLayer
        from kdg.layers import find_layers

        if not find_layers(model, MixStyleLayer):
            raise ValueError(
                "MixStyle trains a network with kdg.layers.MixStyle layers, and this "
                "model has none. Build a ResNet with them: kdg.models.build('resnet50', "
                "..., mixstyle_layers=(1, 2, 3)), in a recipe model.mixstyle_layers: "
                "[1, 2, 3]; or put kdg.layers.MixStyle() in your own network."
            )
