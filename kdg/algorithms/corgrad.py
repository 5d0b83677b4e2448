"""CorGrad (Zhou et al., "Rethinking Domain Generalization from Perspective
of Gradient Granularity").

Per step:
1. per-domain gradients g_d (D passes of B);
2. layering: each trainable variable is a "layer";
3. slicing: each layer's gradient is split along its output axis (the LAST
   axis of a Keras kernel) into `n_parts` chunks of torch.chunk's sizes
   (ceil(rows / n_parts) rows each, the last smaller);
4. conflict removal per chunk, PCGrad-style: for each domain i, for each other
   domain p in ascending order, if a.b < 0 then a <- a - (a.b / |b|^2) b,
   where b is domain p's chunk as already projected (in place, as the
   reference code does; `projection="pcgrad"` projects against the original
   gradients in a random order instead);
5. per layer, domains whose gradient norm is more than one standard
   deviation from the mean are outliers: H_i <- alpha H_i + (1 - alpha) m,
   with m the mean of the other domains' H;
6. the update is the SUM over domains, one optimizer step.

"a.b < 0" means more than rounding: a.b < -tie_tolerance |a| |b|, with a and
b not cancelled to rounding residue by earlier projections (|a|, |b| >
tie_tolerance times their norm before projection). After a is projected
against b, a.b is 0 in exact arithmetic and its sign in floating point is
noise.

How it is computed. Only the D*(D-1) domain pairs are sequential; every
(layer, chunk) is processed at once, in two representations. Small variables
of equal layout (a ResNet's normalization parameters and narrow kernels) are
stacked and handled as one, so that the traced program grows with the number
of layouts rather than of variables.

- Long chunks (at least `GRAM_MIN_LENGTH` elements: most kernels, and the
  one chunk at `granularity="model"`): a corrected chunk is a linear
  combination of the domains' original chunks, h_i = sum_j c_ij g_j, so the
  surgery runs on the chunks' (D, D) Gram matrices G and the coefficients c
  (a.b = c_a' G c_b).
  The gradients are read twice: once for G, once for the final sum. A float32
  G resolves |h|^2 only to about ROUNDING * s^2, with s = sum_j |c_ij| |g_j|
  the scale of the terms, so there a chunk cancelled below that counts as
  cancelled and a conflict must also exceed ROUNDING * s_a * s_b.
- Short chunks (biases, normalization parameters, narrow layers, and every
  chunk at `granularity="element"`), where D coefficients can describe a
  chunk of fewer dimensions only badly: the chunks themselves, zero-padded to
  one length, as rows of one (chunks, length) matrix per domain.
"""

import functools
import math
import operator

import numpy as np
from keras import ops

from kdg import rng as kdg_rng
from kdg.algorithms.base import Algorithm, choice, flag, integer, number
from kdg.ops import gram_cosine_stats

GRANULARITIES = ("layer", "model", "element")


class CorGrad(Algorithm):
    name = "corgrad"
    title = "CorGrad"
    search_space = {
        "n_parts": {"choice": [5, 10, 20, 50, 100]},  # the paper picks it in [5, 100]
        "alpha": {"uniform": [0.5, 1.0]},  # the paper's starting range; reference 0.6
    }
    needs_domain_pairs = True
    #: chunks at least this long are corrected through their Gram matrices
    GRAM_MIN_LENGTH = 128
    #: variables of at most this many elements are stacked with those of the
    #: same layout; larger ones are processed alone (XLA:CPU copies the
    #: stacked gradients: on ResNet-18, stacking every equal kernel made the
    #: surgery alone run 2x slower on JAX)
    GROUP_MAX_SIZE = 1 << 16
    hparams = {
        "n_parts": integer(1),
        "alpha": number(0, 1),  # 1: no smoothing
        "granularity": choice(*GRANULARITIES),
        "smoothing": flag(),
        "projection": choice("sequential", "pcgrad"),
        "layers": choice("all", "kernels"),
        "alpha_schedule": choice("constant", "log_decay"),
        # log_decay: alpha * (1 - log(t + 1) / log(total_steps))
        "total_steps": integer(2, optional=True),
        # cosines within it of 0 are ties, not conflicts
        "tie_tolerance": number(0, 1, high_open=True),
    }

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
        self.check_hparams(locals())
        if alpha_schedule == "log_decay" and total_steps is None:
            raise self.invalid("total_steps", total_steps,
                               "an integer >= 2 (the training steps) with alpha_schedule='log_decay'")
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
        """Where every chunk lies, fixed when the step is traced.

        A variable's gradient is viewed as an (M, rows) matrix (rows: the
        output axis) cut into `chunks` chunks of `per_chunk` rows, each of
        `length` = per_chunk * M elements, in the Gram or the vector
        representation. Variables with the same layout (a ResNet's many
        equal kernels and normalization parameters) form one `_Piece` and
        are processed as one stacked (k, M, rows) tensor, so that the traced
        surgery grows with the number of distinct layouts, not of variables.
        Chunks are numbered Gram ones first, then vector ones, piece by
        piece, (member, chunk) within a piece."""
        groups = {}
        for index, v in enumerate(variables):
            shape = tuple(v.shape)
            size = math.prod(shape)
            rows = shape[-1] if shape else 1
            if self.granularity == "element":
                rows, per_chunk = size, 1
            elif self.granularity == "model":
                per_chunk = rows
            else:
                per_chunk = math.ceil(rows / self.n_parts)  # torch.chunk's sizes
            length = per_chunk * (size // rows)
            gram = self.granularity == "model" or (
                self.granularity == "layer" and length >= self.GRAM_MIN_LENGTH)
            alone = index if size > self.GROUP_MAX_SIZE else None
            key = (gram, size // rows, rows, per_chunk, self._takes_part(v), alone)
            groups.setdefault(key, []).append((index, shape))
        pieces, gram_count, vector_count = [], 0, 0
        for (gram, m, rows, per_chunk, active, _), members in groups.items():
            piece = _Piece([i for i, _ in members], [s for _, s in members], m, rows,
                           per_chunk, gram, active)
            if self.granularity == "model":  # every variable adds to chunk 0
                piece.first, gram_count = 0, 1
            elif gram:
                piece.first, gram_count = gram_count, gram_count + piece.total
            else:
                piece.first, vector_count = vector_count, vector_count + piece.total
            pieces.append(piece)
        return pieces, gram_count, vector_count

    def _chunk_layer(self, pieces, gram_count, vector_count):
        """Per chunk, its layer (variable index) and whether it takes part."""
        if self.granularity == "model":
            return np.zeros(1, "int32"), np.array([True])
        layer = np.zeros(gram_count + vector_count, "int32")
        active = np.zeros(gram_count + vector_count, bool)
        for p in pieces:
            start = p.first + (0 if p.gram else gram_count)
            layer[start : start + p.total] = np.repeat(p.indices, p.chunks)
            active[start : start + p.total] = p.active
        return layer, active

    # -- the two representations --------------------------------------------
    @staticmethod
    def _piece_grads(stacked, p):
        """A piece's per-domain gradients as one (D, [k,] M, rows) tensor (no
        k axis for a single variable: XLA:CPU reduces over the M axis of a
        (1, M, rows) tensor some 15x slower than over that of (M, rows))."""
        num = stacked[0].shape[0]
        if len(p.indices) == 1:
            return ops.reshape(stacked[p.indices[0]], (num, p.m, p.rows))
        return ops.concatenate(
            [ops.reshape(stacked[i], (num, 1, p.m, p.rows)) for i in p.indices], axis=1)

    def _grams(self, grouped, pieces):
        """The long chunks' (D, D) Gram matrices: (chunks, D, D)."""
        grams = []
        for g, p in zip(grouped, pieces):
            if not p.gram:
                continue
            num = g.shape[0]
            g = ops.unstack(g)  # one op for the D slices (TensorFlow traces ops one by one)
            pairs = {}
            for d in range(num):
                for e in range(d, num):
                    pairs[d, e] = pairs[e, d] = ops.sum(g[d] * g[e], axis=-2)  # ([k,] rows)
            gram = ops.stack([ops.stack([pairs[d, e] for e in range(num)], -1)
                              for d in range(num)], -2)  # ([k,] rows, D, D)
            if self.granularity == "model":
                gram = ops.sum(ops.reshape(gram, (-1, num, num)), axis=0, keepdims=True)
            else:
                if p.per_chunk > 1:
                    spec = "rc,krde->kcde" if gram.ndim == 4 else "rc,rde->cde"
                    gram = ops.einsum(spec, p.segments(gram.dtype), gram)
                gram = ops.reshape(gram, (p.total, num, num))
            grams.append(gram)
        if self.granularity == "model":
            return _sum(grams)
        return grams[0] if len(grams) == 1 else ops.concatenate(grams, axis=0)

    @staticmethod
    def _vectors(grouped, pieces):
        """The short chunks, rows of one (D, chunks, length) tensor."""
        width = max([p.length for p in pieces if not p.gram], default=1)
        rows = []
        for g, p in zip(grouped, pieces):
            if p.gram:
                continue
            num = g.shape[0]
            g = ops.swapaxes(g, -1, -2)  # (D, [k,] rows, M)
            pad = [(0, 0)] * (g.ndim - 2) + [(0, p.chunks * p.per_chunk - p.rows), (0, 0)]
            g = ops.reshape(ops.pad(g, pad), (num, p.total, p.length))
            rows.append(ops.pad(g, [(0, 0), (0, 0), (0, width - p.length)]))
        return rows[0] if len(rows) == 1 else ops.concatenate(rows, axis=1)

    def _update(self, grouped, pieces, weights, vectors):
        """Each variable's update: sum_j weights[chunk, j] g_j for a Gram
        piece, the summed vector chunks for the others."""
        out = {}
        for g, p in zip(grouped, pieces):
            lead = (len(p.indices),) if len(p.indices) > 1 else ()
            if p.gram:
                num = g.shape[0]
                if self.granularity == "model":
                    w = weights  # (1, D): one chunk for all
                else:
                    w = ops.reshape(weights[p.first : p.first + p.total],
                                    lead + (p.chunks, num))
                if p.per_chunk > 1:
                    w = ops.matmul(p.segments(w.dtype), w)  # ([k,] rows, D)
                w = ops.unstack(ops.expand_dims(w, -3), axis=-1)  # D x ([k,] 1, rows)
                u = _sum([w_d * g_d for w_d, g_d in zip(w, ops.unstack(g))])
            else:
                u = vectors[p.first : p.first + p.total, : p.length]
                u = ops.reshape(u, lead + (p.chunks * p.per_chunk, p.m))[..., : p.rows, :]
                u = ops.swapaxes(u, -1, -2)  # ([k,] M, rows)
            members = ops.unstack(u) if lead else [u]
            for i, shape, u_i in zip(p.indices, p.shapes, members):
                out[i] = ops.reshape(u_i, shape)
        return [out[i] for i in range(len(out))]  # in variable order

    # -- surgery -------------------------------------------------------------
    def surgery(self, stacked, variables, key=None, step=None):
        """The corrected update (a list like the variables), the diagnostics,
        and the (D, D) Gram matrix of the whole per-domain gradients."""
        pieces, n_gram, n_vector = self._layout(variables)
        chunk_layer, active = self._chunk_layer(pieces, n_gram, n_vector)
        num = stacked[0].shape[0]
        grouped = [self._piece_grads(stacked, p) for p in pieces]
        considered = float(num * (num - 1) * int(active.sum()))
        parts = []
        if n_gram:
            parts.append(_Coefficients(self._grams(grouped, pieces), active[:n_gram]))
        if n_vector:
            parts.append(_Vectors(self._vectors(grouped, pieces), active[n_gram:]))

        made = 0.0
        tol = self.tie_tolerance
        # per part and domain: the chunks' |b|^2, scale and whether they are
        # not cancelled, for h[p] as it is now (reset when h[p] changes)
        cached = [[None] * num for _ in parts]
        for i in range(num):
            if self.projection == "pcgrad":
                order = ops.argsort(kdg_rng.uniform((num,), kdg_rng.fold_in(key, i)))
            for k in range(num):
                if self.projection == "pcgrad":
                    other, skip = order[k], order[k] == i
                elif k == i:
                    continue
                else:
                    other, skip = k, None
                for part, cache in zip(parts, cached):
                    if skip is None and cache[other] is not None:
                        b, bb, sb, b_alive = cache[other]
                    else:
                        b, bb_before = part.other(other)
                        bb, sb = part.dot(b, b), part.scale(b)
                        b_alive = bb > tol * tol * bb_before + sb * sb
                        if skip is None:
                            cache[other] = b, bb, sb, b_alive
                    a = part.h[i]
                    dot, aa, sa = part.dot(a, b), part.dot(a, a), part.scale(a)
                    conflict = ops.logical_and(
                        ops.logical_and(dot < -tol * ops.sqrt(aa * bb) - sa * sb, b_alive),
                        aa > tol * tol * part.before[i] + sa * sa)
                    if part.active is not None:
                        conflict = ops.logical_and(conflict, part.active)
                    if skip is not None:
                        conflict = ops.logical_and(conflict, ops.logical_not(skip))
                    coef = ops.where(conflict, dot / ops.where(bb > 0, bb, 1.0), 0.0)
                    made = made + ops.sum(ops.cast(conflict, "float32"))
                    part.h[i] = a - ops.expand_dims(coef, -1) * b
                    cache[i] = None

        removed = _sum([part.removed() for part in parts])
        total = _sum([part.total() for part in parts])  # Gram matrix of the whole gradients
        ratio = ops.sqrt(ops.maximum(removed, 0.0)) / ops.maximum(ops.sqrt(ops.trace(total)),
                                                                 1e-30)
        frequency = made / max(considered, 1.0)
        if self.smoothing:
            self._smooth(parts, chunk_layer, active, len(variables), step)
        weights = _sum(parts[0].h) if n_gram else None
        vectors = _sum(parts[-1].h) if n_vector else None
        update = self._update(grouped, pieces, weights, vectors)
        logs = {"modification_ratio": ratio, "modification_frequency": frequency}
        return update, logs, total

    def _alpha(self, step):
        if self.alpha_schedule == "constant":
            return self.alpha
        t = ops.cast(step, "float32")
        decay = 1.0 - ops.log(t + 1.0) / math.log(self.total_steps)
        return self.alpha * ops.maximum(decay, 0.0)

    def _smooth(self, parts, chunk_layer, active, n_layers, step):
        """Per layer, a domain whose gradient norm is more than one standard
        deviation from the mean is pulled towards the others' mean."""
        layer_active = np.zeros(n_layers, bool)
        layer_active[chunk_layer] = active
        # chunk -> layer as a (chunks, layers) 0/1 matrix: layer sums are one
        # small matmul, and a layer's value goes back to its chunks by another
        onehot = np.zeros((len(chunk_layer), n_layers), "float32")
        onehot[np.arange(len(chunk_layer)), chunk_layer] = 1.0
        onehot = ops.convert_to_tensor(onehot)
        chunk_sq = ops.concatenate(
            [ops.stack([ops.maximum(part.dot(h, h), 0.0) for h in part.h]) for part in parts],
            axis=1)  # (D, chunks)
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
        start = 0
        for part in parts:
            end = start + part.h[0].shape[0]
            mean_kept = _sum([ops.expand_dims(weight[k, start:end], -1) * h
                              for k, h in enumerate(part.h)])
            part.h = [ops.where(ops.expand_dims(smoothed[i, start:end], -1),
                                alpha * h + (1 - alpha) * mean_kept, h)
                      for i, h in enumerate(part.h)]
            start = end

    def step(self, ctx, x, y):
        return surgery_step(self, ctx, x, y)

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


def surgery_step(corgrad, ctx, x, y, scale=None):
    """One step of gradient surgery, CorGrad's and PCGrad's: the per-domain
    gradients, `corgrad.surgery`'s corrected update (times `scale`, when
    given), one optimizer step. Logs the surgery's diagnostics, the mean
    domain loss and the cosines between the domains' whole gradients."""
    losses, stacked, y_pred, state = ctx.domain_grads(x, y)
    ctx.set_state(state)
    update, logs, gram = corgrad.surgery(stacked, ctx.trainable_variables, key=ctx.key,
                                         step=ctx.step_count)
    if scale is not None:
        update = [scale * u for u in update]
    cos_min, cos_mean = gram_cosine_stats(gram)
    ctx.apply(update)
    logs.update(loss=ops.mean(losses), grad_cos_min=cos_min, grad_cos_mean=cos_mean)
    return logs, y_pred


def _sum(terms):
    """sum() without its leading 0 (an op in a traced graph)."""
    return functools.reduce(operator.add, terms)


class _Piece:
    """Variables of one layout and their place in the surgery (see
    `CorGrad._layout`)."""

    def __init__(self, indices, shapes, m, rows, per_chunk, gram, active):
        self.indices, self.shapes = indices, shapes
        self.m, self.rows, self.per_chunk = m, rows, per_chunk
        self.chunks = math.ceil(rows / per_chunk)  # per variable
        self.total = len(indices) * self.chunks
        self.length = per_chunk * m
        self.gram, self.active = gram, active
        self.first = 0
        self._segments = {}

    def segments(self, dtype):
        """The (rows, chunks) 0/1 matrix that sums rows into chunks (made
        once per dtype: the Gram matrices and the update both use it)."""
        if dtype not in self._segments:
            matrix = np.arange(self.rows)[:, None] // self.per_chunk == np.arange(self.chunks)
            self._segments[dtype] = ops.convert_to_tensor(matrix.astype("float32"), dtype=dtype)
        return self._segments[dtype]


class _Coefficients:
    """Long chunks as coefficients over the domains' original chunks:
    h[i] is (chunks, D), the chunk h_i = sum_j h[i][:, j] g_j."""

    #: float32 Gram matrices resolve c' G c to about this times (sum |c| |g|)^2:
    #: some 17 units of float32 rounding, for entries summed over long chunks
    ROUNDING = 1e-6

    def __init__(self, gram, active):
        self.gram = gram  # (chunks, D, D)
        chunks, num = gram.shape[0], gram.shape[-1]
        self.eye = ops.convert_to_tensor(np.eye(num, dtype="float32"))
        self.h = [ops.broadcast_to(self.eye[i], (chunks, num)) for i in range(num)]
        self.norms = ops.sqrt(ops.maximum(ops.diagonal(gram, axis1=1, axis2=2), 0.0))
        self.before = [ops.square(self.norms[:, i]) for i in range(num)]
        self.active = None if active.all() else ops.convert_to_tensor(active)

    def other(self, p):
        """Domain p's current chunk and its squared norm before projection
        (p may be a traced index: the original chunk, as in PCGrad)."""
        if isinstance(p, int):
            return self.h[p], self.before[p]
        b = ops.broadcast_to(ops.take(self.eye, p, axis=0), self.h[0].shape)
        return b, ops.take(ops.square(self.norms), p, axis=1)

    def dot(self, a, b):
        return ops.sum(a * ops.sum(self.gram * ops.expand_dims(b, 1), axis=-1), axis=-1)

    def scale(self, a):
        """sqrt(ROUNDING) times the scale of the terms of a: (chunks,)."""
        return math.sqrt(self.ROUNDING) * ops.sum(ops.abs(a) * self.norms, axis=-1)

    def removed(self):
        return _sum([ops.sum(self.dot(self.eye[i] - h, self.eye[i] - h))
                     for i, h in enumerate(self.h)])

    def total(self):
        return ops.sum(self.gram, axis=0)


class _Vectors:
    """Short chunks as themselves: h[i] is (chunks, length)."""

    def __init__(self, g, active):
        self.g = g  # (D, chunks, length)
        self.h = [g[i] for i in range(g.shape[0])]
        self.before = [ops.sum(ops.square(h), axis=-1) for h in self.h]
        self.active = None if active.all() else ops.convert_to_tensor(active)

    def other(self, p):
        if isinstance(p, int):
            return self.h[p], self.before[p]
        return ops.take(self.g, p, axis=0), ops.take(ops.stack(self.before), p, axis=0)

    @staticmethod
    def dot(a, b):
        return ops.sum(a * b, axis=-1)

    @staticmethod
    def scale(a):
        return 0.0  # computed from the chunks themselves: rounding is relative

    def removed(self):
        return _sum([ops.sum(ops.square(self.g[i] - h)) for i, h in enumerate(self.h)])

    def total(self):
        flat = ops.reshape(self.g, (self.g.shape[0], -1))
        return ops.matmul(flat, ops.transpose(flat))
