"""CORAL (Sun & Saenko, "Deep CORAL"), as DomainBed's `CORAL` (its
`AbstractMMD` with the mean and covariance kernel).

The step is MMD's (`kdg.algorithms.mmd`: mean cross-entropy over domains
plus mmd_gamma times the mean over pairs i < j of the domains' feature
discrepancy), with the discrepancy of features a (N, F) and b (M, F):

    mean_diff = mean over features of (mean(a) - mean(b))^2
    cova_diff = mean over (F, F) entries of (cov(a) - cov(b))^2
    discrepancy = mean_diff + cova_diff

cov the unbiased covariance (divided by N - 1). The Deep CORAL paper uses
the covariances only, scaled by 1 / (4 F^2); DomainBed adds the means and
takes plain means: kdg follows DomainBed.
"""

from keras import ops

from kdg.algorithms.mmd import MMD


def covariance(a):
    centered = a - ops.mean(a, axis=0, keepdims=True)
    return ops.matmul(ops.transpose(centered), centered) / (a.shape[0] - 1)


class CORAL(MMD):
    name = "coral"
    title = "CORAL"

    @staticmethod
    def discrepancy(a, b):
        mean_diff = ops.mean(ops.square(ops.mean(a, axis=0) - ops.mean(b, axis=0)))
        cova_diff = ops.mean(ops.square(covariance(a) - covariance(b)))
        return mean_diff + cova_diff
