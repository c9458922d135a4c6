"""Frechet distance between two sets of embeddings (av-benchmark's ``compute_fd``, audioldm_eval's).

Each set is summarised by its mean and covariance (``np.cov``, unbiased); the distance of the
Gaussians N(mu1, S1), N(mu2, S2) is ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))``. It needs at
least two clips per set; lower means the generated set is distributed more like the real one.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import SelvaError

log = logging.getLogger(__name__)


def embedding_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,), covariance (D, D)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise SelvaError(f"The Frechet distance needs at least 2 clips per set, got embeddings of shape "
                         f"{embeddings.shape}; hold out more clips.")
    return np.mean(embeddings, axis=0), np.cov(embeddings, rowvar=False)


def _sqrtm(linalg, a: np.ndarray) -> np.ndarray:
    # the same square root av-benchmark takes (its ``disp=False`` only silences a message, and
    # SciPy 1.18 drops that argument)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Distance of two Gaussians; a near-singular product gets ``eps`` on the diagonals, as upstream."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise SelvaError(f"Frechet distance of sets with different embedding sizes ({mu1.shape} vs {mu2.shape})")
    diff = mu1 - mu2
    covmean = _sqrtm(linalg, sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("Frechet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm(linalg, (sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise SelvaError(f"Frechet distance: the covariance square root has an imaginary part of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the embeddings are degenerate.")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def compute_fd(generated: np.ndarray, real: np.ndarray) -> float:
    """FD of the generated set's embeddings to the real set's."""
    return frechet_distance(*embedding_statistics(generated), *embedding_statistics(real))
