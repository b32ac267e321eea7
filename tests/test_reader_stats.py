"""thorax.reader_stats on known answers: Fleiss' kappa against the published worked example, and a
reader's accuracy, sensitivity and specificity counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from thorax.reader_stats import fleiss_kappa, group_kappa, mean_and_error, rating_table, scores

# The worked example of Fleiss' kappa as Wikipedia's article gives it: 10 subjects, 14 raters each,
# 5 categories; the article's result is kappa = 0.210.
WORKED_EXAMPLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])  # fmt: skip


def test_fleiss_kappa_matches_the_worked_example() -> None:
    # By hand: the category shares are 20, 28, 39, 21, 32 of 140 ratings, so P_e = sum p_j^2 =
    # (400 + 784 + 1521 + 441 + 1024) / 19600 = 4170 / 19600 = 0.2128. Each row's P_i is
    # (sum n_ij^2 - 14) / (14 * 13): row 1 (196 - 14) / 182 = 1, row 2 (4 + 36 + 16 + 4 - 14) / 182 =
    # 0.2527, ...; the ten rows' squares add up to 196, 60, 70, 94, 74, 98, 58, 46, 66, 66, so
    # P = (828 - 140) / 1820 = 0.3780 and kappa = (0.3780 - 0.2128) / (1 - 0.2128) = 0.2099.
    assert (WORKED_EXAMPLE.sum(axis=1) == 14).all()
    assert (WORKED_EXAMPLE**2).sum(axis=1).tolist() == [196, 60, 70, 94, 74, 98, 58, 46, 66, 66]
    p_bar, p_e = (828 - 140) / 1820, 4170 / 19600
    kappa = fleiss_kappa(WORKED_EXAMPLE)
    assert kappa == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
    assert round(kappa, 3) == 0.210


def test_fleiss_kappa_is_one_for_full_agreement_and_undefined_for_one_category() -> None:
    assert fleiss_kappa(np.array([[3, 0], [0, 3], [3, 0]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0], [3, 0]])) is None  # chance agreement is already 1
    assert fleiss_kappa(np.zeros((0, 2))) is None
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[2, 0], [1, 0]]))  # a subject with fewer raters


def test_two_readers_kappa_counted_by_hand() -> None:
    truth = ["generated", "real", "generated", "real"]
    first = ["generated", "real", "real", "real"]
    second = ["generated", "generated", "real", None]  # the last one timed out
    table = rating_table([first, second])
    assert table.tolist() == [[2, 0], [1, 1], [0, 2]]  # columns: generated, real; image 4 dropped
    # P_i = 1, 0, 1 -> P = 2/3; shares 3/6 and 3/6 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    kappa, images = group_kappa([first, second])
    assert images == 3 and kappa == pytest.approx(1 / 3)
    assert group_kappa([first]) == (None, 0)

    s = scores(truth, second)
    assert (s.images, s.answered, s.correct) == (4, 3, 1)
    assert (s.accuracy, s.sensitivity, s.specificity) == (0.25, 0.5, 0.0)  # the timeout counts as wrong
    s = scores(truth, first)
    assert (s.accuracy, s.sensitivity, s.specificity) == (0.75, 0.5, 1.0)


def test_scores_refuse_unknown_kinds_and_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        scores(["generated"], ["fake"])
    with pytest.raises(ValueError):
        scores(["generated", "real"], ["real"])
    assert scores(["real"], ["real"]).sensitivity is None  # no generated image to count


def test_mean_and_standard_error_among_readers() -> None:
    mean, error = mean_and_error([0.5, 0.7, None, 0.9])
    assert mean == pytest.approx(0.7) and error == pytest.approx(0.2 / np.sqrt(3))  # sd 0.2 over 3
    assert mean_and_error([0.4]) == (0.4, None) and mean_and_error([]) == (None, None)
