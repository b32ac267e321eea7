"""A model card as a person reads it at a terminal: `thorax models show` prints this summary, and the
whole card (`model_card.json`, about 900 lines) with `--json`.

The summary holds what decides whether a generator fits a use: what it draws, its labels, what it
learned from under which licence, the headline figures of its evaluation and its limitations.
"""

from __future__ import annotations

import textwrap

from thoraxclient.model_card import (
    NO_FINDING,
    describe_label_guidance,
    describe_label_variation_scale,
    guidance_own_labels,
    is_guidance_place,
)

WIDTH = 100


def _wrapped(text: str, indent: str, first: str | None = None) -> list[str]:
    first = indent if first is None else first
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=indent) or [first.rstrip()]


def _evaluation_lines(evaluation: dict) -> list[str]:
    """The headline figures of `thorax evaluate`, those the card has (older cards lack the newer checks)."""
    e = evaluation
    lines = []
    if "memorisation_flagged" in e:
        lines.append(
            f"memorisation: {e['memorisation_flagged']} generated images flagged as near-copies "
            f"({e.get('memorisation_metric', 'SSIM')} threshold {e.get('memorisation_threshold', '?')})"
        )
    if "tstr_mean_auc_synthetic_trained" in e:
        lines.append(
            f"train on synthetic, test on real: mean AUC {e['tstr_mean_auc_synthetic_trained']:.3f}, "
            f"real-trained {e.get('tstr_mean_auc_real_trained', float('nan')):.3f} "
            f"({e.get('tstr_labels_reported', '?')} labels with enough test positives)"
            + (
                f"; ratio {e['tstr_mean_ratio']:.3f} ± {e['tstr_mean_ratio_sd']:.3f} "
                f"over {e['tstr_repeats']} repeats"
                if e.get("tstr_mean_ratio_sd") is not None and "tstr_mean_ratio" in e
                else ""
            )
        )
    if "label_fidelity_mean_auc" in e:
        lines.append(f"label fidelity (a real-trained classifier on generated images): mean AUC "
                     f"{e['label_fidelity_mean_auc']:.3f}; 0.5 is chance")  # fmt: skip
    if "sweep_labels_rising_0.15" in e:
        lines.append(f"sweep 0 -> 1: {e['sweep_labels_rising_0.15']} labels raise their score by 0.15, "
                     f"{e.get('sweep_labels_falling', '?')} fall")  # fmt: skip
    elif "controllability_median_score_change" in e:
        lines.append(f"sweep 0 -> 1: median score change {e['controllability_median_score_change']:+.3f}")
    if "frechet_generated_vs_test" in e:
        lines.append(
            f"Frechet distance to the test images {e['frechet_generated_vs_test']:.2f} "
            f"(real floor {e.get('frechet_real_floor', float('nan')):.2f}), "
            f"KID {e.get('kid_generated_vs_test', float('nan')):.3f} "
            f"(floor {e.get('kid_real_floor', float('nan')):.3f})"
        )
    if "collapse_min_ratio" in e:
        lines.append(f"collapse: lowest diversity ratio {e['collapse_min_ratio']:.2f} "
                     f"(labels below 0.8: {e.get('collapse_labels_below_0.8') or 'none'})")  # fmt: skip
    return lines


def summary(card: dict, is_default: bool = False) -> str:
    """The card in about 40 lines of plain text, for `thorax models show`."""
    arch, labels, data = card["architecture"], card["labels"], card["training_data"]
    ref = f"{card['name']}/{card['version']}"
    lines = [
        f"{ref}{' (the default model)' if is_default else ''}: created {str(card['created'])[:10]} "
        f"from commit {card['git_commit'][:12]}",
        *_wrapped(
            f"{arch['resolution']} px radiographs from a {arch['latent_dim']}-d latent and "
            f"{len(labels['names'])} labels; {arch['family']}; {arch['parameters']:,} parameters; "
            f"{arch['kimg']:g} of {arch['total_kimg']:g} kimg",
            "  ",
        ),
    ]
    if arch.get("conditioning"):
        lines += _wrapped(arch["conditioning"], "    ", "  conditioning: ")
    guidance = arch.get("label_guidance", 1.0)
    if isinstance(guidance, dict):
        places = any(is_guidance_place(k) for k in guidance)
        where = "at those places" if places else "everywhere"
        rest = "" if "*" in guidance or not places else "; elsewhere as trained"
        own = "; images with a label named: that label's strength" if guidance_own_labels(guidance) else ""
        lines.append(
            f"  label guidance: {describe_label_guidance(guidance)} ({where} labels are drawn that "
            f"many times as far as trained{rest}{own})"
        )
    elif guidance != 1.0:
        lines.append(f"  label guidance: {guidance:g} (labels drawn that many times as far as trained)")
    if isinstance(scale := arch.get("label_variation_scale", 1.0), dict):
        lines.append(
            f"  label variation scale: {describe_label_variation_scale(scale)} (images with those labels"
            + (f", {NO_FINDING} those without one" if NO_FINDING in scale else "")
            + ": the label embedding drawn that much more spread; the others as trained)"
        )
    elif scale != 1.0:
        lines.append(f"  label variation scale: {scale:g} (the label embedding drawn that much more spread)")
    lines += ["", f"labels ({labels['encoding']}):", *_wrapped(", ".join(labels["names"]), "  ")]
    lines += ["", "training data:", *_wrapped(data["description"], "  ")]
    if data.get("cohort"):
        lines.append(f"  cohort: {data['cohort']}")
    for source in data["sources"]:
        lines += _wrapped(f"{source['name']}: {source['images']} images", "    ", "  - ")
        lines += _wrapped(source["licence"], "      ", "    licence: ")
        lines += _wrapped(source["attribution"], "      ", "    attribution: ")
    if card.get("evaluation"):
        lines += ["", "evaluation (thorax evaluate; every figure in evaluation.json):"]
        lines += [w for line in _evaluation_lines(card["evaluation"]) for w in _wrapped(line, "    ", "  ")]
    else:
        lines += ["", "evaluation: none yet (thorax evaluate)"]
    lines += ["", "limitations:"]
    for item in [*card["limitations"], *(c for c in data["caveats"] if c not in card["limitations"])]:
        lines += _wrapped(item, "    ", "  - ")
    lines += ["", *_wrapped(card["intended_use"], "  ", "intended use: ")]
    lines += _wrapped("; ".join(card["not_for"]), "  ", "not for: ")
    lines += ["", f"the whole card: thorax models show {ref} --json"]
    return "\n".join(lines)
