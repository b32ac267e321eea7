"""The reader study's statistics, numpy only: how well readers tell generated radiographs from real ones,
and how much they agree (the paper's Table 1).

A reader's answer to an image is "generated", "real" or None (the time ran out). Positive means
generated: sensitivity is the share of generated images called generated, specificity the share of real
images called real. An image left unanswered counts against the reader in accuracy, sensitivity and
specificity alike (the paper's readers had to decide within the time). Fleiss' kappa (Fleiss 1971)
measures agreement across several readers over the images that every one of them answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GENERATED, REAL = "generated", "real"
CATEGORIES = (GENERATED, REAL)


@dataclass(frozen=True)
class Scores:
    """One reader's scores over some images; a share is None where it has no images to count."""

    images: int
    answered: int
    correct: int
    accuracy: float | None
    sensitivity: float | None  # generated images called generated
    specificity: float | None  # real images called real


def _share(hits: int, of: int) -> float | None:
    return hits / of if of else None


def scores(truth: Sequence[str], answers: Sequence[str | None]) -> Scores:
    """A reader's accuracy, sensitivity and specificity; `truth[i]` is the kind of image i, `answers[i]`
    the reader's call (None when the time ran out)."""
    if len(truth) != len(answers):
        raise ValueError(f"{len(truth)} images but {len(answers)} answers")
    if not set(truth) <= set(CATEGORIES) or not set(answers) <= {*CATEGORIES, None}:
        raise ValueError(f"kinds are {CATEGORIES} (answers may also be None)")
    is_generated = np.array([t == GENERATED for t in truth], bool)  # [n]
    said_generated = np.array([a == GENERATED for a in answers], bool)
    said_real = np.array([a == REAL for a in answers], bool)
    true_positive = int((is_generated & said_generated).sum())
    true_negative = int((~is_generated & said_real).sum())
    generated = int(is_generated.sum())
    return Scores(
        images=len(truth),
        answered=int((said_generated | said_real).sum()),
        correct=true_positive + true_negative,
        accuracy=_share(true_positive + true_negative, len(truth)),
        sensitivity=_share(true_positive, generated),
        specificity=_share(true_negative, len(truth) - generated),
    )


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from a table `counts[i, j]`: how many raters put subject i in category j; every row
    sums to the same number of raters n >= 2. None where it is undefined: no subjects, or every rating
    in one category (chance agreement is then 1)."""
    counts = np.asarray(counts, np.float64)  # [subjects, categories]
    if counts.ndim != 2 or counts.shape[0] == 0:
        return None
    raters = counts.sum(axis=1)
    if not np.allclose(raters, raters[0]) or raters[0] < 2:
        raise ValueError("every subject needs the same number of raters, at least 2")
    n = raters[0]
    p_category = counts.sum(axis=0) / counts.sum()  # [categories] share of all ratings
    p_subject = ((counts**2).sum(axis=1) - n) / (n * (n - 1))  # [subjects] agreeing pairs of raters
    p_bar, p_expected = p_subject.mean(), (p_category**2).sum()
    if np.isclose(p_expected, 1.0):
        return None
    return float((p_bar - p_expected) / (1.0 - p_expected))


def rating_table(answers_by_reader: Sequence[Sequence[str | None]]) -> np.ndarray:
    """Readers' answers to the same images -> Fleiss' table [images, (generated, real)], over the images
    that every reader answered."""
    answers = np.array(answers_by_reader, dtype=object)  # [readers, images]
    if answers.ndim != 2:
        raise ValueError("every reader needs an answer (or None) for every image")
    complete = np.array([all(a is not None for a in column) for column in answers.T], bool)
    kept = answers[:, complete]
    return np.stack([(kept == c).sum(axis=0) for c in CATEGORIES], axis=1).astype(np.int64)


def group_kappa(answers_by_reader: Sequence[Sequence[str | None]]) -> tuple[float | None, int]:
    """Fleiss' kappa across readers and the number of images it counts (those every reader answered);
    None with fewer than two readers."""
    if len(answers_by_reader) < 2:
        return None, 0
    table = rating_table(answers_by_reader)
    return fleiss_kappa(table), len(table)


def mean_and_error(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """The mean of the readers' values and its standard error among them (the paper's ±), ignoring None;
    the error is None with fewer than two values."""
    kept = np.array([v for v in values if v is not None], np.float64)
    if len(kept) == 0:
        return None, None
    if len(kept) == 1:
        return float(kept[0]), None
    return float(kept.mean()), float(kept.std(ddof=1) / np.sqrt(len(kept)))
