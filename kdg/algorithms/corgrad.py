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

All (layer, chunk) pairs are processed at once: the gradients are laid out as
one flat vector per domain, chunks are segments of it, and each domain pair
is one segment reduction (the fastest kernel of each backend for sorted
segments, `kdg.backend.segment_sum`). Only the D*(D-1) pairs are sequential.
"""

import math

import numpy as np
from keras import ops

from kdg import backend
from kdg import random as kdg_random
from kdg.algorithms.base import Algorithm
from kdg.ops import cosine_stats

GRANULARITIES = ("layer", "model", "element")


def chunk_rows(rows, n_parts):
    """torch.chunk's chunk index of each of `rows` rows."""
    size = math.ceil(rows / n_parts)
    return np.arange(rows) // size


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
        """Static segment ids over the flat gradient vector: chunk ids (what
        is projected), layer ids (what is smoothed), and which take part."""
        chunk_ids, layer_ids, chunk_active = [], [], []
        n_chunks = 0
        for index, v in enumerate(variables):
            shape = tuple(v.shape) or (1,)
            rows, size = shape[-1], math.prod(shape)
            active = self._takes_part(v) or self.granularity == "model"
            if self.granularity == "model":
                ids = np.zeros(size, dtype=np.int64)
            elif self.granularity == "element":
                ids = n_chunks + np.arange(size)
            else:
                ids = n_chunks + np.repeat(chunk_rows(rows, self.n_parts), size // rows)
            if self.granularity != "model" or index == 0:
                count = int(ids.max()) + 1 - n_chunks
                chunk_active += [active] * count
                n_chunks += count
            chunk_ids.append(ids)
            layer_ids.append(np.full(size, 0 if self.granularity == "model" else index))
        return (
            np.concatenate(chunk_ids).astype("int32"),
            n_chunks,
            np.array(chunk_active),
            np.concatenate(layer_ids).astype("int32"),
            1 if self.granularity == "model" else len(variables),
        )

    @staticmethod
    def _flatten(stacked):
        """Per-domain flat vectors (D, N), each variable laid out output-axis
        first so that a chunk is a contiguous run of rows."""
        parts = []
        for g in stacked:
            g = ops.reshape(g, (g.shape[0], 1)) if len(g.shape) == 1 else g
            g = ops.moveaxis(g, -1, 1)
            parts.append(ops.reshape(g, (g.shape[0], -1)))
        return ops.concatenate(parts, axis=1)

    @staticmethod
    def _unflatten(flat, variables):
        out, start = [], 0
        for v in variables:
            shape = tuple(v.shape)
            size = math.prod(shape)
            piece = flat[start : start + size]
            start += size
            if len(shape) <= 1:
                out.append(ops.reshape(piece, shape))
            else:
                moved = (shape[-1],) + shape[:-1]
                out.append(ops.moveaxis(ops.reshape(piece, moved), 0, -1))
        return out

    # -- surgery -------------------------------------------------------------
    def surgery(self, stacked, variables, key=None, step=None):
        """The corrected update (a list like the variables) and diagnostics,
        from stacked per-domain gradients."""
        chunk_ids, n_chunks, chunk_active, layer_ids, n_layers = self._layout(variables)
        element = self.granularity == "element"
        ids = ops.convert_to_tensor(chunk_ids)
        active = ops.convert_to_tensor(chunk_active)

        def seg(values):
            """Per-chunk sums of the columns of values (N, k): (chunks, k)."""
            if element:
                return values
            return backend.segment_sum(values, ids, n_chunks)

        def spread(per_chunk):
            return per_chunk if element else ops.take(per_chunk, ids)

        g = self._flatten(stacked)
        num = g.shape[0]
        # Every reduction of a pair in one segment sum (a kernel launch per
        # pair, not per quantity): the squared norms of the original chunks
        # once for all domains, then a.b, b.b and a.a per pair.
        orig_sq = seg(ops.transpose(ops.square(g)))  # (chunks, D)
        h = [g[i] for i in range(num)]
        made = 0.0
        for i in range(num):
            if self.projection == "pcgrad":
                order = ops.argsort(kdg_random.uniform((num,), kdg_random.fold_in(key, i)))
            for k in range(num):
                if self.projection == "pcgrad":
                    p = order[k]
                    b = ops.take(g, p, axis=0)
                    skip = p == i
                    bb_orig = ops.take(orig_sq, p, axis=1)
                else:
                    if k == i:
                        continue
                    b, skip, bb_orig = h[k], False, orig_sq[:, k]
                a = h[i]
                sums = seg(ops.stack([a * b, b * b, a * a], axis=1))
                dot, bb, aa = sums[:, 0], sums[:, 1], sums[:, 2]
                # After a is projected against b, a.b is 0 in exact arithmetic
                # and its sign in floating point is noise: a conflict must be
                # more than rounding.
                # Likewise a chunk that projections cancelled is rounding
                # residue, not a direction to project against.
                tol = self.tie_tolerance
                limit = -tol * ops.sqrt(aa * bb)
                alive = ops.logical_and(
                    bb > tol * tol * bb_orig,
                    aa > tol * tol * orig_sq[:, i],
                )
                conflict = ops.logical_and(
                    ops.logical_and(dot < limit, alive),
                    ops.logical_and(active, ops.logical_not(skip)),
                )
                coef = ops.where(conflict, dot / ops.where(bb > 0, bb, 1.0), 0.0)
                h[i] = a - spread(coef) * b
                made = made + ops.sum(ops.cast(conflict, "float32"))
        considered = float(num * (num - 1) * int(chunk_active.sum()))
        removed = ops.sum(ops.square(g - ops.stack(h)))
        ratio = ops.sqrt(removed) / ops.maximum(ops.sqrt(ops.sum(ops.square(g))), 1e-30)
        frequency = made / max(considered, 1.0)

        if self.smoothing:
            h = self._smooth(h, layer_ids, n_layers, variables, step)
        update = h[0]
        for hi in h[1:]:
            update = update + hi
        logs = {"modification_ratio": ratio, "modification_frequency": frequency}
        return self._unflatten(update, variables), logs

    def _alpha(self, step):
        if self.alpha_schedule == "constant":
            return self.alpha
        t = ops.cast(step, "float32")
        decay = 1.0 - ops.log(t + 1.0) / math.log(self.total_steps)
        return self.alpha * ops.maximum(decay, 0.0)

    def _smooth(self, h, layer_ids, n_layers, variables, step):
        if self.granularity == "model":
            layer_active = np.array([True])
        else:
            layer_active = np.array([self._takes_part(v) for v in variables])
        lids = ops.convert_to_tensor(layer_ids)

        norms = ops.sqrt(ops.transpose(
            backend.segment_sum(ops.square(ops.stack(h, axis=1)), lids, n_layers)))  # (D, L)
        mu = ops.mean(norms, axis=0)
        sigma = ops.sqrt(ops.mean(ops.square(norms - mu), axis=0))
        # With two domains |n_i - mu| == sigma exactly: not an outlier.
        outlier = ops.logical_and(
            ops.abs(norms - mu) > sigma * (1.0 + self.tie_tolerance),
            ops.convert_to_tensor(layer_active),
        )
        keep = 1.0 - ops.cast(outlier, "float32")
        count = ops.maximum(ops.sum(keep, axis=0), 1.0)
        mean_kept = sum(ops.take(keep[i] / count, lids) * h[i] for i in range(len(h)))
        alpha = self._alpha(step)
        return [
            ops.where(ops.take(outlier[i], lids), alpha * h[i] + (1 - alpha) * mean_kept, h[i])
            for i in range(len(h))
        ]

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
