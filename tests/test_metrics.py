"""training.metrics against known answers: hand-computed AUCs and ranks, O(n^2) references, closed forms
of the Fréchet distance, and distributions whose AUC, correlation or distance is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    bootstrap_auc,
    cluster_order,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_distance,
    pearson_matrix,
    rankdata,
    roc_auc,
    spearman,
)


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The fraction of (positive, negative) pairs ordered right, a tie counting half: AUC by definition."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    right = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return right / (len(pos) * len(neg))


def test_rankdata_averages_ties_along_the_axis() -> None:
    values = np.array([[3, 1, 2, 2, 5], [7, 7, 7, 7, 7]])
    expected = np.array([[4, 1, 2.5, 2.5, 5], [3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(rankdata(values, axis=1), expected)
    np.testing.assert_array_equal(rankdata(values.T, axis=0), expected.T)
    np.testing.assert_array_equal(rankdata(np.array([0.5, -1.0, 0.5, 0.5])), [3, 1, 3, 3])


def test_roc_auc_at_the_extremes() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(5, 0.4)) == 0.5
    assert roc_auc(labels.astype(bool), np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert math.isnan(roc_auc(np.ones(4), np.arange(4.0)))
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))


def test_roc_auc_of_a_small_case_with_ties() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.3, 0.3])
    # positives 0.9, 0.5, 0.3 against negatives 0.5, 0.1, 0.3: 3 + (0.5 + 1 + 1) + (0 + 1 + 0.5) = 7 of 9
    assert roc_auc(labels, scores) == pytest.approx(7 / 9)
    assert roc_auc(np.array([0.9, 0.6, 0.2, 0.4, 0.7, 0.0]), scores) == pytest.approx(7 / 9)  # >= 0.5


def test_roc_auc_is_the_fraction_of_pairs_ordered_right() -> None:
    rng = np.random.default_rng(1)
    for n in (7, 60, 301):
        labels = (rng.random(n) < 0.35).astype(int)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 12, n) / 4.0  # few distinct values: many ties
        assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_bootstrap_interval_covers_the_known_auc() -> None:
    shift = 1.0  # positives N(1, 1) against negatives N(0, 1): AUC = Phi(1 / sqrt(2)) = 0.760
    true_auc = 0.5 * (1.0 + math.erf(shift / 2.0))
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 200)
    scores = rng.normal(size=400) + shift * labels
    for seed in (0, 1, 2):
        result = bootstrap_auc(labels, scores, resamples=2000, seed=seed)
        assert result["low"] < true_auc < result["high"], (result, true_auc)
        assert result["low"] < result["auc"] < result["high"]
        assert 0.06 < result["high"] - result["low"] < 0.14  # the width of n=400, not a lucky spread
    assert result["auc"] == roc_auc(labels, scores)
    assert (result["resamples"], result["positives"], result["negatives"]) == (2000, 200, 200)


def test_each_resample_is_scored_as_roc_auc_would() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(40) < 0.4).astype(int)
    scores = rng.integers(0, 5, 40).astype(float)  # ties across and within the classes
    for seed in range(5):
        # one resample: the interval collapses onto its AUC; its indices are the seed's first draw
        index = np.random.default_rng(seed).integers(0, 40, size=(1, 40))[0]
        result = bootstrap_auc(labels, scores, resamples=1, seed=seed)
        expected = roc_auc(labels[index], scores[index])
        assert result["low"] == pytest.approx(expected, abs=1e-12)
        assert result["high"] == pytest.approx(expected, abs=1e-12)


def test_resamples_without_both_classes_are_dropped_and_counted() -> None:
    labels = np.zeros(50, int)
    labels[[3, 17]] = 1  # two positives: (48/50)^50 = 13% of resamples draw neither
    scores = np.linspace(0.0, 1.0, 50)
    result = bootstrap_auc(labels, scores, resamples=2000, seed=0)
    assert 150 < 2000 - result["resamples"] < 400, result
    assert (result["positives"], result["negatives"]) == (2, 48)
    assert result["low"] <= result["auc"] <= result["high"]
    single = bootstrap_auc(np.ones(10), scores[:10], resamples=100)
    assert single["resamples"] == 0 and math.isnan(single["auc"]) and math.isnan(single["low"])


def test_spearman_sees_only_the_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    assert spearman(x, x**3 + np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -np.exp(2 * x)) == pytest.approx(-1.0)
    assert abs(spearman(rng.normal(size=2000), rng.normal(size=2000))) < 0.1
    # ties take average ranks: x ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman(np.ones(5), np.arange(5)))


def test_pearson_matrix_matches_corrcoef() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))  # correlated columns
    np.testing.assert_allclose(pearson_matrix(scores), np.corrcoef(scores.T), atol=1e-12)


def test_a_constant_column_correlates_with_nothing() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 3))
    scores[:, 1] = 0.25
    corr = pearson_matrix(scores)
    assert np.isnan(corr[1, [0, 2]]).all() and np.isnan(corr[[0, 2], 1]).all()
    np.testing.assert_array_equal(np.diag(corr), [1.0, 1.0, 1.0])
    assert corr[0, 2] == pytest.approx(np.corrcoef(scores[:, 0], scores[:, 2])[0, 1])


def test_cluster_order_puts_each_block_together() -> None:
    rng = np.random.default_rng(0)
    block = np.repeat([0, 1, 2], [4, 3, 5])  # [12]: the cluster of each label
    same = block[:, None] == block[None, :]
    similarity = np.where(same, rng.uniform(0.6, 0.9, (12, 12)), rng.uniform(-0.2, 0.2, (12, 12)))
    similarity = (similarity + similarity.T) / 2
    similarity[0, 9] = similarity[9, 0] = np.nan  # read as 0: still apart
    shuffle = rng.permutation(12)
    shuffled = similarity[np.ix_(shuffle, shuffle)]
    order = cluster_order(shuffled)
    assert sorted(order) == list(range(12))
    blocks = block[shuffle][order]
    runs = [b for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1]]
    assert sorted(runs) == [0, 1, 2], blocks  # three runs, one per block
    assert cluster_order(shuffled) == order


def test_frechet_distance_of_a_set_to_itself_is_zero() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)) * 30.0 + 5.0  # correlated, large
    variance = np.trace(np.cov(features, rowvar=False))
    assert abs(frechet_distance(features, features)) < 1e-6 * variance
    few = rng.normal(size=(10, 32))  # fewer samples than features: a singular covariance
    assert abs(frechet_distance(few, few)) < 1e-6 * np.trace(np.cov(few, rowvar=False))


def test_frechet_distance_of_two_samples_of_one_gaussian_is_small() -> None:
    rng = np.random.default_rng(0)
    assert frechet_distance(rng.normal(size=(5000, 8)), rng.normal(size=(5000, 8))) < 0.05


def test_frechet_distance_of_a_mean_shift_is_its_squared_length() -> None:
    rng = np.random.default_rng(0)
    shift = np.array([1.0, -0.5, 0.0, 2.0, 0.25, 0.0, -1.0, 0.5])  # ||m||^2 = 6.5625
    a = rng.normal(size=(5000, 8))
    assert frechet_distance(a, a + shift) == pytest.approx(6.5625, abs=1e-9)  # same covariance exactly
    # an independent sample: its mean is off by N(0, 2/5000) per axis, and 2 m.(that) has sd 0.1
    assert frechet_distance(a, rng.normal(size=(5000, 8)) + shift) == pytest.approx(6.5625, abs=0.4)


def test_frechet_distance_in_one_dimension_is_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, size=(300, 1))
    b = rng.normal(-0.5, 0.7, size=(200, 1))
    s_a, s_b = a.std(ddof=1), b.std(ddof=1)
    expected = (a.mean() - b.mean()) ** 2 + (s_a - s_b) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 3)), rng.normal(0.3, 1.0, size=(15, 3))
    m = 12  # the subset is all of a (in some order), and 12 of b's 15
    result = kernel_inception_distance(a, b, subsets=1, subset_size=m, seed=4)
    picked = np.random.default_rng(4)
    picked.choice(12, m, replace=False)
    y = b[picked.choice(15, m, replace=False)]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (u @ v / 3 + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert result["kid"] == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert result["subset_size"] == m and result["std"] == 0.0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    same = kernel_inception_distance(rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)), subsets=20)
    assert abs(same["kid"]) < 0.01 and same["subset_size"] == 1000
    shifted = kernel_inception_distance(
        rng.normal(size=(2000, 8)), rng.normal(0.5, 1.0, size=(2000, 8)), subsets=50, subset_size=500
    )
    assert shifted["kid"] > 10 * shifted["std"] > 0, shifted


def test_mean_pairwise_distance_of_known_sets() -> None:
    assert mean_pairwise_distance(np.tile([[0.3, -2.0, 5.0]], (50, 1))) == 0.0  # one point, 50 times
    assert mean_pairwise_distance(np.array([[0.0], [3.0]])) == pytest.approx(3.0)
    assert mean_pairwise_distance(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # (1 + 3 + 2) / 3
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 4 sides of 1, 2 diagonals
    assert mean_pairwise_distance(square) == pytest.approx((4 + 2 * math.sqrt(2)) / 6)
    assert mean_pairwise_distance(1000.0 + square) == pytest.approx((4 + 2 * math.sqrt(2)) / 6)


def test_mean_pairwise_distance_scales_with_the_features_and_matches_every_pair() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    pairs = [np.linalg.norm(x[i] - x[j]) for i in range(40) for j in range(i + 1, 40)]
    assert mean_pairwise_distance(x, chunk=7) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert mean_pairwise_distance(2.5 * x) == pytest.approx(2.5 * np.mean(pairs), rel=1e-12)


def test_the_binomial_interval_is_exact_at_its_closed_forms_and_covers_the_count() -> None:
    from training.metrics import binomial_interval

    assert binomial_interval(0, 10) == (0.0, pytest.approx(1 - 0.025**0.1, abs=1e-9))  # (alpha/2)^(1/n)
    assert binomial_interval(10, 10) == (pytest.approx(0.025**0.1, abs=1e-9), 1.0)
    lo, hi = binomial_interval(5, 1000)  # Clopper-Pearson tables: 0.00162 to 0.01163
    assert lo == pytest.approx(0.001625, abs=2e-6) and hi == pytest.approx(0.011629, abs=2e-6)
    narrow = binomial_interval(50, 10000)  # the same share on ten times the images: a narrower interval
    assert lo < narrow[0] < 0.005 < narrow[1] < hi
    for bad in [(-1, 10), (11, 10), (0, 0)]:
        with pytest.raises(ValueError):
            binomial_interval(*bad)
