"""The evaluation's arithmetic, numpy only: ROC AUC with a bootstrap interval, rank and linear
correlation, a leaf order that shows clustered labels as blocks, the Fréchet and kernel distances
between two sets of features, and the mean pairwise distance within one set (the collapse detector).

Nothing here knows about images, networks or labels' names: `training.classifier` and `training.evaluate`
turn those into arrays and call these functions. float64 throughout, so that small differences (an AUC
interval, a Fréchet distance near zero) are not rounding.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_CHUNK = 1000  # resamples drawn at once: [1000, n] indices stay a few MB for n in the thousands


def rankdata(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Ranks 1..n along `axis`, ties given the average of the ranks they span (scipy's "average" method).
    Every row along `axis` is ranked on its own, all rows in one vectorised pass. Returns float64 of the
    same shape."""
    values = np.asarray(values)
    moved = np.moveaxis(values, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])  # [R, n]
    n = rows.shape[1]
    order = np.argsort(rows, axis=1, kind="stable")  # [R, n]
    ordered = np.take_along_axis(rows, order, axis=1)  # [R, n], ascending per row
    position = np.broadcast_to(np.arange(n), rows.shape)  # [R, n]: 0-based place in the sorted row
    starts = np.ones(rows.shape, bool)  # a tie group starts where the value changes
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(rows.shape, bool)  # and ends just before the next start
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)  # [R, n]
    last = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]  # [R, n]
    ranks = np.empty(rows.shape, np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return np.moveaxis(ranks.reshape(moved.shape), -1, axis)


def _positives(labels: np.ndarray) -> np.ndarray:
    """0/1, bool or probability-like labels -> bool, positive where the value is >= 0.5."""
    return np.asarray(labels, dtype=np.float64) >= 0.5


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of `scores` [n] for binary `labels` [n], as the Mann-Whitney U over
    n_pos * n_neg: the chance that a random positive scores above a random negative, ties counting half
    (average ranks). nan when only one class is present, where the AUC is undefined."""
    positive = _positives(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    assert positive.shape == scores.shape, (positive.shape, scores.shape)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = rankdata(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict:
    """The AUC of `scores` [n] for `labels` [n] with a percentile bootstrap interval at `level`.

    Cases are resampled with replacement, `BOOTSTRAP_CHUNK` resamples at once. A resample needs no sort:
    it is a count of draws per distinct score, and the Mann-Whitney U follows from cumulative counts of
    negatives below each score (ties counting half), exactly as average ranks would give. A resample that
    drew a single class has no AUC and is dropped, so "resamples" (those kept) can be below the number
    asked for when positives are rare. Returns {"auc", "low", "high", "resamples", "positives",
    "negatives"}; low and high are nan when no resample had both classes."""
    positive = _positives(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    assert positive.shape == scores.shape and positive.size > 0, (positive.shape, scores.shape)
    assert 0.0 < level < 1.0, level
    n = positive.size
    _, tie_group = np.unique(scores, return_inverse=True)  # [n]: index of the case's distinct score
    groups = int(tie_group.max()) + 1
    rng = np.random.default_rng(seed)
    aucs: list[np.ndarray] = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, resamples - start)
        index = rng.integers(0, n, size=(count, n))  # [C, n]: case indices of each resample
        slot = np.arange(count)[:, None] * groups + tie_group[index]  # [C, n]: (resample, score) bin
        drawn_positive = positive[index]  # [C, n]
        pos = np.bincount(slot[drawn_positive], minlength=count * groups).reshape(count, groups)  # [C, G]
        neg = np.bincount(slot[~drawn_positive], minlength=count * groups).reshape(count, groups)  # [C, G]
        neg_below = np.cumsum(neg, axis=1) - neg  # [C, G]: negatives scoring strictly lower
        u = (pos * (neg_below + 0.5 * neg)).sum(axis=1)  # [C]
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)  # [C]
        both = (n_pos > 0) & (n_neg > 0)
        aucs.append(u[both] / (n_pos[both] * n_neg[both]))
    kept = np.concatenate(aucs) if aucs else np.empty(0)
    if kept.size:
        low, high = np.quantile(kept, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    else:
        low = high = float("nan")
    return {
        "auc": roc_auc(positive, scores),
        "low": float(low),
        "high": float(high),
        "resamples": int(kept.size),
        "positives": int(positive.sum()),
        "negatives": int(n - positive.sum()),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of `x` [n] and `y` [n] (Pearson's on average ranks, so ties are
    handled); nan when either is constant, where no ordering exists to agree with."""
    rx = rankdata(np.asarray(x, dtype=np.float64).ravel())
    ry = rankdata(np.asarray(y, dtype=np.float64).ravel())
    assert rx.shape == ry.shape, (rx.shape, ry.shape)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if norm == 0.0:
        return float("nan")
    return float(np.clip((rx * ry).sum() / norm, -1.0, 1.0))


def pearson_matrix(scores: np.ndarray) -> np.ndarray:
    """[N, L] -> [L, L] Pearson correlation between the columns (as `np.corrcoef(scores.T)`). A constant
    column correlates with nothing: nan off the diagonal, 1 on it, so a heatmap still has its diagonal."""
    scores = np.asarray(scores, dtype=np.float64)
    assert scores.ndim == 2, scores.shape
    centred = scores - scores.mean(axis=0)  # [N, L]
    norms = np.sqrt((centred * centred).sum(axis=0))  # [L]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred.T @ centred) / np.outer(norms, norms)  # [L, L]
    corr[norms == 0.0, :] = np.nan
    corr[:, norms == 0.0] = np.nan
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def cluster_order(similarity: np.ndarray) -> list[int]:
    """Leaf order of average-linkage agglomerative clustering on distance 1 - similarity [L, L] (nan read
    as similarity 0, the matrix symmetrised), so that a heatmap in this order shows clusters as blocks.

    The closest pair of clusters merges first (ties: the lowest indices), and the two are joined in the
    orientation whose touching leaves are the most similar; the result is deterministic."""
    similarity = np.nan_to_num(np.asarray(similarity, dtype=np.float64), nan=0.0)
    assert similarity.ndim == 2 and similarity.shape[0] == similarity.shape[1], similarity.shape
    leaf_distance = 1.0 - (similarity + similarity.T) / 2.0  # [L, L]
    distance = leaf_distance.copy()  # [L, L] between clusters, by the slot of their first leaf
    np.fill_diagonal(distance, np.inf)
    orders = {i: [i] for i in range(similarity.shape[0])}  # active clusters: slot -> leaf order
    while len(orders) > 1:
        i, j = np.unravel_index(int(np.argmin(distance)), distance.shape)
        i, j = min(i, j), max(i, j)
        a, b = orders[i], orders.pop(j)
        joins = [a + b, a + b[::-1], a[::-1] + b, a[::-1] + b[::-1]]
        orders[i] = min(joins, key=lambda o: leaf_distance[o[len(a) - 1], o[len(a)]])  # first of the best
        # Lance-Williams for average linkage: the merged cluster's distance is the size-weighted mean
        merged = (len(a) * distance[i] + len(b) * distance[j]) / (len(a) + len(b))  # [L]
        distance[i, :] = distance[:, i] = merged
        distance[j, :] = distance[:, j] = np.inf
        distance[i, i] = np.inf
    return [int(leaf) for leaf in next(iter(orders.values()))]


def _mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> mean [D] and unbiased covariance [D, D], float64."""
    features = np.asarray(features, dtype=np.float64)
    assert features.ndim == 2 and features.shape[0] >= 2, features.shape
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to features `a` [N, D] and `b` [M, D] (FID when the
    features are Inception's): ||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^(1/2)).

    Tr (Ca Cb)^(1/2) is the sum of the square roots of the eigenvalues of sqrt(Ca) Cb sqrt(Ca), which is
    symmetric PSD, so two `eigh`s with negative rounding clipped to 0 replace scipy's sqrtm and its complex
    round-off; the distance of a set to itself is then zero to rounding."""
    mu_a, cov_a = _mean_and_covariance(a)
    mu_b, cov_b = _mean_and_covariance(b)
    assert mu_a.shape == mu_b.shape, (mu_a.shape, mu_b.shape)
    eigvals, eigvecs = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs * np.sqrt(eigvals.clip(0.0))) @ eigvecs.T  # [D, D]
    inner = sqrt_a @ cov_b @ sqrt_a  # [D, D], PSD
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((inner + inner.T) / 2.0).clip(0.0)).sum()
    mean_term = float(((mu_a - mu_b) ** 2).sum())
    return float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[m, D] and [m, D] -> [m, m] of (x.y / D + 1)^3, KID's kernel."""
    k = x @ y.T / x.shape[1] + 1.0
    return k * k * k  # not ** 3: numpy's pow is some 20x slower on large arrays


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict:
    """The kernel distance (KID, Bińkowski et al. 2018) between features `a` [N, D] and `b` [M, D]: the
    unbiased MMD^2 with the cubic polynomial kernel, averaged over `subsets` random subsets of
    min(subset_size, N, M) drawn without replacement from each set. Unbiased, so it can be slightly
    negative when the two sets come from one distribution. Returns {"kid", "std" (over the subsets),
    "subset_size"}."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1], (a.shape, b.shape)
    m = min(subset_size, len(a), len(b))
    assert m >= 2, m
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]  # [m, D]
        y = b[rng.choice(len(b), m, replace=False)]  # [m, D]
        k_xx, k_yy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)  # [m, m]
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[s] = within - 2.0 * _polynomial_kernel(x, y).mean()
    return {"kid": float(values.mean()), "std": float(values.std()), "subset_size": m}


def mean_pairwise_distance(features: np.ndarray, chunk: int = 1024) -> float:
    """The mean Euclidean distance over all unordered pairs of rows of `features` [N, D] (N >= 2): the
    spread of a set, 0 when every row is the same. Scaling every feature by s scales it by s.

    Squared distances come from the Gram matrix (|a|^2 + |b|^2 - 2 a.b, negative rounding clipped to
    0) in row chunks, so a few thousand rows cost a few MB, not an [N, N, D] array."""
    x = np.asarray(features, dtype=np.float64)
    assert x.ndim == 2 and x.shape[0] >= 2, x.shape
    x = x - x.mean(axis=0)  # distances are unchanged; the Gram terms stay small beside them
    n = x.shape[0]
    norms = (x * x).sum(axis=1)  # [N]
    total = 0.0
    for start in range(0, n, chunk):
        block = x[start : start + chunk]  # [C, D]
        squared = norms[start : start + chunk, None] + norms[None, :] - 2.0 * block @ x.T  # [C, N]
        rows = np.arange(len(block))
        squared[rows, start + rows] = 0.0  # a row's distance to itself, which rounding leaves above 0
        total += float(np.sqrt(squared.clip(0.0)).sum())
    return total / (n * (n - 1))  # each unordered pair was counted twice, once from each side


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n in the thousands is fine)."""
    import math

    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg = math.lgamma
    terms = [lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion seen as k of n: the p at which k or more, and
    k or fewer, would each be seen with probability (1 - level) / 2. Found by bisection."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1.0 - level) / 2.0

    def solve(f) -> float:  # f decreasing in p on [0, 1]; the p where f(p) = tail
        lo, hi = 0.0, 1.0
        for _ in range(100):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if f(mid) > tail else (lo, mid)
        return (lo + hi) / 2.0

    lower = 0.0 if k == 0 else 1.0 - solve(lambda q: _binomial_cdf(n - k, n, q))
    upper = 1.0 if k == n else solve(lambda p: _binomial_cdf(k, n, p))
    return lower, upper
