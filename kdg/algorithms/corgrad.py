"""CorGrad (Zhou et al., "Rethinking Domain Generalization from Perspective
of Gradient Granularity").

Per step:
1. per-domain gradients g_d (D passes of B);
2. layering: each trainable variable is a "layer";
3. slicing: each layer's gradient is split along its output axis (the LAST
   axis of a Keras kernel) into `n_parts` chunks of torch.chunk's sizes
   (ceil(rows / n_parts) rows each, the last smaller);
4. conflict removal per chunk, PCGrad-style: for each domain i, for each other
   domain p in ascending order, if a.b < 0 (by more than rounding:
   a.b < -tie_tolerance |a| |b|, and b not cancelled to rounding residue by
   earlier projections: |a|, |b| > tie_tolerance times their norm before
   projection) then a <- a - (a.b / |b|^2) b, where
   b is domain p's chunk as already projected (in place, as the reference
   code does; `projection="pcgrad"` projects against the original gradients
   in a random order instead);
5. per layer, domains whose gradient norm is more than one standard
   deviation from the mean are outliers: H_i <- alpha H_i + (1 - alpha) m,
   with m the mean of the other domains' H;
6. the update is the SUM over domains, one optimizer step.

All (layer, chunk) pairs are processed at once: the chunks of equal length
are rows of one matrix per domain (zero-padded where torch.chunk's last
chunk is shorter), so a domain pair is one sum over the last axis and one
broadcast per distinct chunk length. Only the D*(D-1) pairs are sequential.
"""

import math

import numpy as np
from keras import ops

from kdg import random as kdg_random
from kdg.algorithms.base import Algorithm
from kdg.ops import cosine_stats

GRANULARITIES = ("layer", "model", "element")


class CorGrad(Algorithm):
    name = "corgrad"
    needs_domain_pairs = True

    def __init__(
        self,
        n_parts=10,
        alpha=0.6,
        granularity="layer",
        smoothing=True,
        projection="sequential",
        layers="all",
        alpha_schedule="constant",
        total_steps=None,
        tie_tolerance=1e-5,
    ):
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"CorGrad granularity must be one of {GRANULARITIES}; got {granularity!r}."
            )
        if projection not in ("sequential", "pcgrad"):
            raise ValueError(
                f"CorGrad projection must be 'sequential' or 'pcgrad'; got {projection!r}."
            )
        if layers not in ("all", "kernels"):
            raise ValueError(f"CorGrad layers must be 'all' or 'kernels'; got {layers!r}.")
        if alpha_schedule not in ("constant", "log_decay"):
            raise ValueError(
                "CorGrad alpha_schedule must be 'constant' or 'log_decay'; "
                f"got {alpha_schedule!r}."
            )
        if alpha_schedule == "log_decay" and not total_steps:
            raise ValueError("CorGrad alpha_schedule='log_decay' needs total_steps.")
        if int(n_parts) < 1:
            raise ValueError(f"CorGrad n_parts must be >= 1; got {n_parts}.")
        self.n_parts = int(n_parts)
        self.alpha = float(alpha)
        self.granularity = granularity
        self.smoothing = bool(smoothing)
        self.projection = projection
        self.layers = layers
        self.alpha_schedule = alpha_schedule
        self.total_steps = int(total_steps) if total_steps else None
        self.tie_tolerance = float(tie_tolerance)

    def _takes_part(self, variable):
        """`layers="kernels"` restricts the surgery to dense and convolution
        kernels and biases, as the reference code can; other variables'
        gradients are summed over domains untouched."""
        return self.layers == "all" or variable.path.split("/")[-1] in ("kernel", "bias")

    # -- layout --------------------------------------------------------------
    def _layout(self, variables):
        """The static layout of the chunks, in *groups* of equal chunk length.

        A variable's gradient, output axis first, is `n` chunks of
        `per_chunk` rows each (torch.chunk's sizes; the last chunk is
        zero-padded to the others' length), i.e. an (n, length) matrix. Variables whose chunks
        have the same length share a group, an (n_1 + n_2 + ..., length)
        matrix, so that all chunks of a group are reduced by one sum over the
        last axis and scaled by one broadcast: no per-element index arrays,
        and the work per domain pair grows with the number of distinct chunk
        lengths, not with the number of variables or chunks.

        Returns (pieces, groups, chunk_layer, n_layers): per variable
        (group, first chunk, chunks, rows per chunk, rows); per group (length,
        chunks, active (chunks,) bool); the layer of every chunk, groups in
        order; the number of layers (what is smoothed)."""
        if self.granularity == "model":
            size = sum(math.prod(tuple(v.shape) or (1,)) for v in variables)
            return None, [(size, 1, np.array([True]))], np.zeros(1, "int32"), 1
        lengths, pieces = {}, []
        for v in variables:
            shape = tuple(v.shape) or (1,)
            rows, cols = shape[-1], math.prod(shape[:-1])
            if self.granularity == "element":
                rows, cols = math.prod(shape), 1
                per_chunk, n = 1, rows
            else:
                per_chunk = math.ceil(rows / self.n_parts)
                n = math.ceil(rows / per_chunk)
            length = per_chunk * cols
            group = lengths.setdefault(length, len(lengths))
            pieces.append([group, None, n, per_chunk, rows])
        groups, chunk_layer, count = [], [], [0] * len(lengths)
        active = [[] for _ in lengths]
        layers = [[] for _ in lengths]
        for index, (v, piece) in enumerate(zip(variables, pieces)):
            group, n = piece[0], piece[2]
            piece[1] = count[group]
            count[group] += n
            active[group] += [self._takes_part(v)] * n
            layers[group] += [index] * n
        for length, group in lengths.items():
            groups.append((length, count[group], np.array(active[group])))
            chunk_layer += layers[group]
        return [tuple(p) for p in pieces], groups, np.array(chunk_layer, "int32"), len(variables)

    @staticmethod
    def _to_groups(stacked, pieces, groups):
        """Stacked per-domain gradients -> per group (D, chunks, length)."""
        if pieces is None:  # granularity "model": one chunk of everything
            flat = [ops.reshape(g, (g.shape[0], -1)) for g in stacked]
            return [ops.expand_dims(ops.concatenate(flat, axis=1), 1)]
        members = [[] for _ in groups]
        for g, (group, _, n, per_chunk, rows) in zip(stacked, pieces):
            if len(g.shape) > 2:
                g = ops.moveaxis(g, -1, 1)  # output axis first
            g = ops.reshape(g, (g.shape[0], rows, -1))  # (element granularity: cols 1)
            if n * per_chunk != rows:
                g = ops.pad(g, [(0, 0), (0, n * per_chunk - rows), (0, 0)])
            members[group].append(ops.reshape(g, (g.shape[0], n, -1)))
        return [m[0] if len(m) == 1 else ops.concatenate(m, axis=1) for m in members]

    @staticmethod
    def _from_groups(grouped, pieces, variables):
        """Per group (chunks, length) -> a list like the variables."""
        out, start = [], 0
        for v, piece in zip(variables, pieces or [None] * len(variables)):
            shape = tuple(v.shape)
            size = math.prod(shape)
            if piece is None:  # granularity "model"
                flat = ops.reshape(grouped[0], (-1,))[start : start + size]
                start += size
                out.append(ops.reshape(flat, shape))
                continue
            group, first, n, per_chunk, rows = piece
            block = ops.reshape(grouped[group][first : first + n], (n * per_chunk, -1))[:rows]
            if len(shape) <= 1:
                out.append(ops.reshape(block, shape))
            else:
                moved = (shape[-1],) + shape[:-1]
                out.append(ops.moveaxis(ops.reshape(block, moved), 0, -1))
        return out

    # -- surgery -------------------------------------------------------------
    def surgery(self, stacked, variables, key=None, step=None):
        """The corrected update (a list like the variables) and diagnostics,
        from stacked per-domain gradients."""
        pieces, groups, chunk_layer, n_layers = self._layout(variables)
        g = self._to_groups(stacked, pieces, groups)  # per group (D, chunks, length)
        num = stacked[0].shape[0]

        bounds = np.cumsum([0] + [chunks for _, chunks, _ in groups]).tolist()
        active = ops.convert_to_tensor(np.concatenate([act for _, _, act in groups]))

        def dots(a, b):
            """Chunk dot products, all groups: (chunks,). A batched dot (no
            product tensor) per group, then one vector."""
            out = [ops.sum(ak * bk, axis=-1) for ak, bk in zip(a, b)]
            return out[0] if len(out) == 1 else ops.concatenate(out)

        # squared norms of the original chunks: (D, chunks)
        orig_sq = ops.stack([dots([gk[i] for gk in g], [gk[i] for gk in g]) for i in range(num)])
        h = [[gk[i] for gk in g] for i in range(num)]  # h[domain][group]: (chunks, length)
        made = 0.0
        tol = self.tie_tolerance
        for i in range(num):
            if self.projection == "pcgrad":
                order = ops.argsort(kdg_random.uniform((num,), kdg_random.fold_in(key, i)))
            for k in range(num):
                if self.projection == "pcgrad":
                    p = order[k]
                    b = [ops.take(gk, p, axis=0) for gk in g]
                    skip = p == i
                    bb_orig = ops.take(orig_sq, p, axis=0)
                else:
                    if k == i:
                        continue
                    b, skip, bb_orig = h[k], False, orig_sq[k]
                a = h[i]
                dot, bb, aa = dots(a, b), dots(b, b), dots(a, a)
                # After a is projected against b, a.b is 0 in exact arithmetic
                # and its sign in floating point is noise: a conflict must be
                # more than rounding. Likewise a chunk that projections
                # cancelled is rounding residue, not a direction to project
                # against.
                limit = -tol * ops.sqrt(aa * bb)
                alive = ops.logical_and(bb > tol * tol * bb_orig, aa > tol * tol * orig_sq[i])
                conflict = ops.logical_and(
                    ops.logical_and(dot < limit, alive),
                    ops.logical_and(active, ops.logical_not(skip)),
                )
                coef = ops.where(conflict, dot / ops.where(bb > 0, bb, 1.0), 0.0)
                made = made + ops.sum(ops.cast(conflict, "float32"))
                h[i] = [ak - ops.expand_dims(coef[lo:hi], -1) * bk
                        for ak, bk, lo, hi in zip(a, b, bounds[:-1], bounds[1:])]
        considered = float(num * (num - 1) * sum(int(active.sum()) for _, _, active in groups))
        removed = sum(ops.sum(ops.square(gk - ops.stack([h[i][j] for i in range(num)])))
                      for j, gk in enumerate(g))
        total = sum(ops.sum(ops.square(gk)) for gk in g)
        ratio = ops.sqrt(removed) / ops.maximum(ops.sqrt(total), 1e-30)
        frequency = made / max(considered, 1.0)

        if self.smoothing:
            h = self._smooth(h, groups, chunk_layer, n_layers, variables, step)
        update = [sum(h[i][j] for i in range(num)) for j in range(len(groups))]
        logs = {"modification_ratio": ratio, "modification_frequency": frequency}
        return self._from_groups(update, pieces, variables), logs

    def _alpha(self, step):
        if self.alpha_schedule == "constant":
            return self.alpha
        t = ops.cast(step, "float32")
        decay = 1.0 - ops.log(t + 1.0) / math.log(self.total_steps)
        return self.alpha * ops.maximum(decay, 0.0)

    def _smooth(self, h, groups, chunk_layer, n_layers, variables, step):
        """Per layer, a domain whose gradient norm is more than one standard
        deviation from the mean is pulled towards the others' mean."""
        if self.granularity == "model":
            layer_active = np.array([True])
        else:
            layer_active = np.array([self._takes_part(v) for v in variables])
        num = len(h)
        # chunk -> layer as a (chunks, layers) 0/1 matrix: layer sums are one
        # small matmul, and a layer's value goes back to its chunks by another
        onehot = np.zeros((len(chunk_layer), n_layers), "float32")
        onehot[np.arange(len(chunk_layer)), chunk_layer] = 1.0
        onehot = ops.convert_to_tensor(onehot)
        chunk_sq = ops.stack([
            ops.concatenate([ops.sum(ops.square(hij), axis=-1) for hij in hi], axis=0)
            for hi in h
        ])  # (D, chunks)
        norms = ops.sqrt(ops.matmul(chunk_sq, onehot))  # (D, layers)
        mu = ops.mean(norms, axis=0)
        sigma = ops.sqrt(ops.mean(ops.square(norms - mu), axis=0))
        # With two domains |n_i - mu| == sigma exactly: not an outlier.
        outlier = ops.logical_and(
            ops.abs(norms - mu) > sigma * (1.0 + self.tie_tolerance),
            ops.convert_to_tensor(layer_active),
        )
        keep = 1.0 - ops.cast(outlier, "float32")
        count = ops.maximum(ops.sum(keep, axis=0), 1.0)
        alpha = self._alpha(step)
        # per domain and chunk: its weight in the mean of the kept domains,
        # and whether it is smoothed
        weight = ops.matmul(keep / count, ops.transpose(onehot))  # (D, chunks)
        smoothed = ops.matmul(ops.cast(outlier, "float32"), ops.transpose(onehot)) > 0.5
        bounds = np.cumsum([0] + [chunks for _, chunks, _ in groups])
        out = [[] for _ in range(num)]
        for j in range(len(groups)):
            lo, hi_ = int(bounds[j]), int(bounds[j + 1])
            w = [ops.expand_dims(weight[i, lo:hi_], -1) for i in range(num)]
            mean_kept = sum(w[i] * h[i][j] for i in range(num))
            for i in range(num):
                mask = ops.expand_dims(smoothed[i, lo:hi_], -1)
                out[i].append(ops.where(mask, alpha * h[i][j] + (1 - alpha) * mean_kept,
                                        h[i][j]))
        return out

    def step(self, ctx, x, y):
        losses, stacked, y_pred, state = ctx.domain_grads(x, y)
        ctx.set_state(state)
        cos_min, cos_mean = cosine_stats(stacked)
        update, logs = self.surgery(stacked, ctx.variables, key=ctx.key, step=ctx.step)
        ctx.apply(update)
        logs.update(loss=ops.mean(losses), grad_cos_min=cos_min, grad_cos_mean=cos_mean)
        return logs, y_pred

    def get_config(self):
        return {
            "n_parts": self.n_parts,
            "alpha": self.alpha,
            "granularity": self.granularity,
            "smoothing": self.smoothing,
            "projection": self.projection,
            "layers": self.layers,
            "alpha_schedule": self.alpha_schedule,
            "total_steps": self.total_steps,
            "tie_tolerance": self.tie_tolerance,
        }
