"""Property tests of the rebalancing arithmetic (thoraxclient.rebalance): targets met exactly, never a
negative deficit, co-occurring labels counted once per image, labels asked only of models that have them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thoraxclient.errors import DatasetError
from thoraxclient.rebalance import add_counts, deficits, plan, resolve_targets, split_by_weight, union_labels

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Hernia"]

counts = st.dictionaries(
    st.sampled_from(LABELS), st.integers(0, 60), min_size=len(LABELS), max_size=len(LABELS)
)
targets_st = st.dictionaries(st.sampled_from(LABELS), st.integers(0, 80), min_size=1, max_size=len(LABELS))
patterns_st = st.lists(
    st.fixed_dictionaries(
        {"labels": st.lists(st.sampled_from(LABELS), min_size=0, max_size=3, unique=True),
         "count": st.integers(0, 50)}
    ),
    max_size=12,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(base=counts, targets=targets_st, patterns=patterns_st, seed=st.integers(0, 2**32),
       comorbidity=st.sampled_from(["prior", "none"]))  # fmt: skip
def test_requested_labels_end_exactly_at_their_targets(base, targets, patterns, seed, comorbidity) -> None:
    result = plan(targets, base, {"m": LABELS}, patterns={"m": patterns}, comorbidity=comorbidity, seed=seed)
    after = result.counts_after(base)
    for label, target in targets.items():
        assert after[label] == max(target, base[label])
        assert result.deficits[label] == max(0, target - base[label]) >= 0
    rows = result.rows.get("m", [])
    assert len(rows) == sum(result.deficits.values())
    for row in rows:  # one requested label per synthetic image, always present
        assert len(set(row) & set(targets)) == 1 and len(set(row)) == len(row)
        if comorbidity == "none":
            assert len(row) == 1


@settings(max_examples=100, deadline=None)
@given(base=counts, targets=targets_st, patterns=patterns_st, seed=st.integers(0, 2**32))
def test_labels_not_requested_rise_by_their_comorbid_images_once_each(base, targets, patterns, seed) -> None:
    result = plan(targets, base, {"m": LABELS}, patterns={"m": patterns}, seed=seed)
    after = result.counts_after(base)
    rows = result.rows.get("m", [])
    for label in set(LABELS) - set(targets):
        assert after[label] == base[label] + sum(label in row for row in rows)
    assert plan(targets, base, {"m": LABELS}, patterns={"m": patterns}, seed=seed) == result  # deterministic


@given(base=counts, targets=targets_st)
def test_deficits_are_never_negative(base, targets) -> None:
    assert all(v >= 0 for v in deficits(base, targets).values())


def test_an_image_positive_for_two_labels_counts_once_for_each() -> None:
    assert add_counts({"Mass": 1}, [("Mass", "Effusion"), ("Effusion",)]) == {"Mass": 2, "Effusion": 2}
    # a target already met by a co-occurring base image needs nothing more
    assert deficits({"Mass": 2, "Effusion": 2}, {"Mass": 2, "Effusion": 3}) == {"Mass": 0, "Effusion": 1}


@settings(max_examples=100, deadline=None)
@given(count=st.integers(0, 10_000), weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=4))
def test_a_split_by_weight_adds_up_and_stays_within_one_of_proportional(count, weights) -> None:
    named = {f"m{i}": w for i, w in enumerate(weights)}
    shares = split_by_weight(count, named)
    assert sum(shares.values()) == count
    for name, w in named.items():
        assert abs(shares[name] - count * w / sum(weights)) < 1 + 1e-9


@settings(max_examples=100, deadline=None)
@given(base=counts, targets=targets_st, seed=st.integers(0, 2**32),
       weight_b=st.floats(0.1, 10))  # fmt: skip
def test_pooled_models_are_asked_only_for_labels_they_have(base, targets, seed, weight_b) -> None:
    models = {"a/1": LABELS[:3], "b/1": LABELS[1:]}  # a lacks Mass and Hernia; b lacks Atelectasis
    patterns = {
        "a/1": [{"labels": ["Cardiomegaly", "Effusion"], "count": 3}],
        "b/1": [{"labels": ["Hernia", "Mass"], "count": 2}, {"labels": ["Mass"], "count": 5}],
    }
    result = plan(targets, base, models, weights={"a/1": 1.0, "b/1": weight_b}, patterns=patterns, seed=seed)
    for model, rows in result.rows.items():
        assert all(set(row) <= set(models[model]) for row in rows)
        assert set(result.requested[model]) <= set(models[model])
    after = result.counts_after(base)
    assert all(after[label] == max(t, base[label]) for label, t in targets.items())
    for label in targets:
        asked = sum(r.get(label, 0) for r in result.requested.values())
        assert asked == max(0, targets[label] - base[label])


def test_uniform_raises_every_label_to_the_most_frequent() -> None:
    base = {"Mass": 7, "Effusion": 3, "Hernia": 0}
    assert resolve_targets("uniform", list(base), base) == {"Mass": 7, "Effusion": 7, "Hernia": 7}


def test_label_names_match_in_any_case_and_unknown_ones_are_a_clear_error() -> None:
    assert resolve_targets({"pleural thickening": 3, "MASS": 1}, ["Mass", "Pleural_Thickening"], {}) == {
        "Pleural_Thickening": 3, "Mass": 1,
    }  # fmt: skip
    with pytest.raises(DatasetError, match="unknown label 'Covid'.*known labels: Mass"):
        resolve_targets({"Covid": 3}, ["Mass"], {})
    with pytest.raises(DatasetError, match="whole number"):
        resolve_targets({"Mass": -1}, ["Mass"], {})
    with pytest.raises(DatasetError, match="named twice"):
        resolve_targets({"Mass": 1, "mass": 2}, ["Mass"], {})
    with pytest.raises(DatasetError, match="uniform"):
        resolve_targets("uniform", ["Mass"], {"Mass": 0})


def test_union_labels_keep_first_spelling_and_order() -> None:
    assert union_labels({"a": ["Mass", "Effusion"], "b": ["effusion", "Hernia"]}) == [
        "Mass",
        "Effusion",
        "Hernia",
    ]
