"""Issue 11's conditioning: labels into every generator block, the projection critic, the ramp, the
differentiable augmentation with its adaptive strength, and rare-label sampling."""

from __future__ import annotations

import pytest
import torch

from thorax.errors import UserError
from training.augment import AdaptiveStrength, augment, brightness_contrast, cutout, translate
from training.config import config_from_dict, load_config
from training.networks import Discriminator, Generator, fold_equalized_lr, parse_label_guidance
from training.train import label_row_weights

CHANNELS = {4: 8, 8: 8, 16: 6}
LATENT, LABELS = 12, 14


def _modulated(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10).eval()


def test_modulation_starts_unconditional_and_then_steers_every_block() -> None:
    G = _modulated()
    z = torch.randn(3, LATENT)
    sick = torch.zeros(3, LABELS)
    sick[:, 1] = 1.0
    G.cond_gain = 0.0  # the ramp's start: labels have no effect at all
    assert torch.equal(G(z, torch.zeros(3, LABELS)), G(z, sick))
    G.cond_gain = 1.0
    with torch.no_grad():  # a trained modulation: only the 16 px block's scale and shift move
        G.blocks["16"].mod1.affine.weight.normal_()
    healthy_out, sick_out = G(z, torch.zeros(3, LABELS)), G(z, sick)
    assert not torch.allclose(healthy_out, sick_out)
    G.cond_gain = 0.0
    assert torch.equal(G(z, torch.zeros(3, LABELS)), G(z, sick))


def test_modulated_generator_folds_for_export_without_changing_its_images() -> None:
    G = _modulated()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "affine" in name:
                p.normal_(0, 0.5)
    z, labels = torch.randn(4, LATENT), torch.rand(4, LABELS)
    before = G(z, labels)
    after = fold_equalized_lr(G)(z, labels)
    assert torch.allclose(before, after, atol=1e-5)


def _trained_modulation(G: Generator) -> Generator:
    with torch.no_grad():  # as if trained: every modulation and the label map move
        for name, p in G.named_parameters():
            if "affine" in name or "label_map" in name:
                p.normal_(0, 0.5)
    return G


def test_label_guidance_leaves_no_finding_and_multiplies_each_labels_change() -> None:
    G = _trained_modulation(_modulated())
    z, zeros = torch.randn(3, LATENT), torch.zeros(3, LABELS)
    sick = zeros.clone()
    sick[:, [1, 2]] = torch.tensor([1.0, 0.5])
    seen: list[torch.Tensor] = []
    hook = G.mod4.register_forward_pre_hook(lambda _m, args: seen.append(args[1].detach().clone()))
    as_trained, healthy = G(z, sick), G(z, zeros)
    G.label_guidance = 2.0
    guided, guided_healthy = G(z, sick), G(z, zeros)
    hook.remove()
    assert torch.equal(guided_healthy, healthy)  # no finding draws as trained
    assert not torch.allclose(guided, as_trained)
    e_sick, e0 = seen[0], seen[1]  # the embeddings the modulations read, as trained
    assert torch.allclose(seen[2], e0 + 2.0 * (e_sick - e0), atol=1e-5)
    assert torch.allclose(seen[3], e0, atol=1e-6)
    G.label_guidance = 1.0
    assert torch.equal(G(z, sick), as_trained)


def test_label_guidance_at_the_input_is_the_labels_scaled() -> None:
    torch.manual_seed(1)
    plain = Generator(16, LATENT, LABELS, CHANNELS).eval()  # the paper's: labels beside the latent only
    z, labels = torch.randn(2, LATENT), torch.rand(2, LABELS)
    guided = Generator(16, LATENT, LABELS, CHANNELS, label_guidance=1.5).eval()
    guided.load_state_dict(plain.state_dict())
    assert torch.allclose(guided(z, labels), plain(z, 1.5 * labels), atol=1e-6)


def test_a_guided_generator_folds_for_export_without_changing_its_images() -> None:
    G = _trained_modulation(_modulated())
    G.label_guidance = 2.5
    z, labels = torch.randn(4, LATENT), torch.rand(4, LABELS)
    before = G(z, labels)
    assert torch.allclose(before, fold_equalized_lr(G)(z, labels), atol=1e-5)


def test_label_guidance_per_place_changes_only_the_blocks_it_names() -> None:
    """{"16": 3}: the 16 px block's modulations read e0 + 3 (e - e0); the 4 and 8 px blocks and the
    input read the labels as trained, and no finding draws as trained."""
    G = _trained_modulation(_modulated())
    z, zeros = torch.randn(3, LATENT), torch.zeros(3, LABELS)
    sick = zeros.clone()
    sick[:, 4] = 1.0
    seen: dict[str, list[torch.Tensor]] = {"4": [], "8": [], "16": []}
    modules = {"4": G.mod4, "8": G.blocks["8"].mod0, "16": G.blocks["16"].mod0}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, side=side: seen[side].append(args[1].detach().clone()))
        for side, m in modules.items()
    ]
    as_trained, healthy = G(z, sick), G(z, zeros)
    G.label_guidance = {"16": 3.0}
    guided, guided_healthy = G(z, sick), G(z, zeros)
    for h in hooks:
        h.remove()
    assert torch.equal(guided_healthy, healthy) and not torch.allclose(guided, as_trained)
    e_sick, e0 = seen["4"][0], seen["4"][1]
    assert torch.equal(seen["4"][2], e_sick) and torch.equal(seen["8"][2], e_sick)  # as trained
    assert torch.allclose(seen["16"][2], e0 + 3.0 * (e_sick - e0), atol=1e-5)
    G.label_guidance = {"4": 3.0, "8": 3.0, "16": 3.0, "input": 3.0}  # every place: the uniform form
    everywhere = G(z, sick)
    G.label_guidance = 3.0
    assert torch.allclose(everywhere, G(z, sick), atol=1e-6)


def test_label_guidance_per_place_is_checked_and_parsed() -> None:
    assert parse_label_guidance("1.5") == 1.5
    assert parse_label_guidance(" 32=1.5, input=2,16=2.5") == {"input": 2.0, "16": 2.5, "32": 1.5}
    for text, why in [
        ("0", "in \\(0, 10\\]"),
        ("16=0", "at 16"),
        ("12=2", "unknown place '12'"),
        ("16=x", "'16=x' is not PLACE=NUMBER"),
        ("16=2,32", "elsewhere must be a number in \\(0, 10\\], got 32"),  # 32: every other place
        ("16=2,3,2", "'3' is not PLACE=NUMBER"),  # the strength elsewhere, twice
        ("2,*=3", "give the strength elsewhere once"),
        ("2,Pneumonia=0", "for Pneumonia must be a number"),
        ("strong", "expected a number"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_label_guidance(text)
    G = _modulated()
    with pytest.raises(ValueError, match="names block 32, but this generator's largest is 16"):
        G.label_guidance = {"32": 2.0}
    with pytest.raises(ValueError, match="names block 32"):
        Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_guidance={"32": 2.0})
    assert G.label_guidance == 1.0  # a refused setting leaves the generator as it was


def test_a_label_with_its_own_guidance_changes_only_the_images_with_that_label(tmp_path) -> None:
    """{"*": 2, "l3": 1}: images without l3 draw at guidance 2, exactly; an image with l3 whole (alone
    or beside another label) draws as the generator at guidance 1, a half l3 as at 1.5; of two labels
    with strengths of their own the one further from the place's wins. Baked into ONNX."""
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.export import export_onnx, onnx_parity

    names = [f"l{i}" for i in range(LABELS)]
    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True, label_names=names)
    G = _trained_modulation(G.eval())
    labels = torch.zeros(6, LABELS)
    labels[1, 2] = 1.0  # another label: guidance 2
    labels[2, 3] = 1.0  # l3 whole: guidance 1
    labels[3, [2, 3]] = 1.0  # l3 beside l2: l3's strength for the whole image
    labels[4, 3] = 0.5  # half l3: half way, 1.5
    labels[5, [3, 9]] = 1.0  # l3 (1) and l9 (4): l9 is further from 2, so 4
    z = torch.randn(6, LATENT)

    def drawn_at(w: float) -> torch.Tensor:
        G.label_guidance = w
        return G(z, labels)

    with torch.no_grad():
        at = {w: drawn_at(w) for w in (1.0, 1.5, 2.0, 4.0)}
        G.label_guidance = {"*": 2.0, "l9": 4.0, "l3": 1.0}
        assert G.label_guidance == {"*": 2.0, "l3": 1.0, "l9": 4.0}  # labels in the generator's order
        mixed = G(z, labels)
    assert torch.equal(mixed[:2], at[2.0][:2])  # no finding and l2: exactly as at guidance 2
    for row, w in [(2, 1.0), (3, 1.0), (4, 1.5), (5, 4.0)]:
        assert torch.allclose(mixed[row], at[w][row], atol=1e-5), row
        assert mixed[row].sub(at[2.0][row]).abs().max() > 1e-3, row
    with torch.no_grad():
        save_generator(tmp_path, G, generator_config(G, tuple(names), CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_guidance"] == {"*": 2.0, "l3": 1.0, "l9": 4.0}
        assert torch.equal(loaded(z, labels), mixed)
    export_onnx(loaded, tmp_path / "g.onnx")
    assert onnx_parity(loaded, tmp_path / "g.onnx") < 1e-4
    G.label_guidance = {"16": 3.0, "l3": 1.0}  # places and a label: l3's images at 1 in the 16 px block too
    with torch.no_grad():
        assert torch.allclose(G(z, labels)[2], at[1.0][2], atol=1e-5)
    assert parse_label_guidance("2, l3=1,16=2.5") == {"16": 2.5, "*": 2.0, "l3": 1.0}
    with pytest.raises(ValueError, match="unknown place 'nope'.*or one of this generator's labels \\(l0, l1"):
        G.label_guidance = {"*": 2.0, "nope": 1.0}
    assert G.label_guidance == {"16": 3.0, "l3": 1.0}  # a refused value leaves the last one
    with pytest.raises(
        ValueError, match="^--label-variation-scale"
    ):  # a refused pair leaves both as they were
        G.set_sampling(label_guidance={"*": 2.0}, label_variation_scale={"nope": 2.0})
    with torch.no_grad():
        assert torch.allclose(G(z, labels)[2], at[1.0][2], atol=1e-5)  # l3's own strength still drawn
    unnamed = _modulated()
    with pytest.raises(ValueError, match="unknown place 'l3'"):
        unnamed.label_guidance = {"l3": 1.0}


def test_modulations_from_16_px_leave_the_smaller_blocks_to_the_latent() -> None:
    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_modulation_from=16).eval()
    assert not hasattr(G, "mod4") and not G.blocks["8"].modulated and G.blocks["16"].modulated
    _trained_modulation(G)
    z, sick = torch.randn(2, LATENT), torch.zeros(2, LABELS)
    sick[:, 3] = 1.0
    seen: list[torch.Tensor] = []
    hook = G.blocks["8"].register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    G.label_guidance = {"16": 2.0}
    before = G(z, sick)
    with torch.no_grad():  # another label embedding: the 8 px features do not see it, the image does
        for p in G.label_map.parameters():
            p.normal_(0, 0.5)
    after = G(z, sick)
    hook.remove()
    assert torch.equal(seen[0], seen[1]) and not torch.allclose(before, after)
    with pytest.raises(ValueError, match="modulate the blocks from 16 px on only"):
        G.label_guidance = {"8": 2.0}
    raw = load_config("tiny").to_dict()
    for side in (12, 2, 32):  # not a power of two; under 4; over the tiny config's 16 px
        with pytest.raises(UserError, match="label_modulation_from must be a block side"):
            config_from_dict({**raw, "label_modulation": 8, "label_modulation_from": side})
    assert load_config("nih64-mod16").label_modulation_from == 16


def test_label_variation_draws_the_embedding_with_the_latents_first_components(tmp_path) -> None:
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.export import export_onnx, onnx_parity

    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True).eval()
    _trained_modulation(G)
    sick = torch.zeros(4, LABELS)
    sick[:, 2] = 1.0
    z = torch.randn(4, LATENT)
    moved = z.clone()
    moved[:, 10:] = torch.randn(4, LATENT - 10)  # only the components past the embedding's width
    e, e_moved = G.label_embedding_of(sick, z), G.label_embedding_of(sick, moved)
    assert torch.equal(e, e_moved)  # sigma starts at 1: e = mu + z[:, :10]
    assert torch.allclose(e, G.label_map(sick) + z[:, :10], atol=1e-6)
    assert e[0].sub(e[1]).abs().max() > 0.1  # one label vector, two latents: two embeddings
    mu = G.label_map(sick[:1])
    assert torch.allclose(G.label_kl(sick), 0.5 * mu.square().mean(), atol=1e-6)  # KL at sigma 1
    with torch.no_grad():  # a trained spread: sigma depends on the labels
        G.label_log_sigma.weight.normal_(0, 0.3)
    with torch.no_grad():
        out = G(z, sick)
        G.label_guidance = {"16": 2.0}  # guidance still leaves no finding exactly as trained
        healthy = torch.zeros(4, LABELS)
        guided_healthy = G(z, healthy)
        G.label_guidance = 1.0
        assert torch.equal(guided_healthy, G(z, healthy))
        save_generator(tmp_path, G, generator_config(G, tuple(f"l{i}" for i in range(LABELS)), CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_variation"] is True and torch.equal(loaded(z, sick), out)
    export_onnx(loaded, tmp_path / "g.onnx")
    assert onnx_parity(loaded, tmp_path / "g.onnx") < 1e-4
    with pytest.raises(ValueError, match="label_variation draws the label embedding"):
        Generator(16, LATENT, LABELS, CHANNELS, label_modulation=0, label_variation=True)
    with pytest.raises(ValueError, match="label_variation draws the label embedding"):
        Generator(16, LATENT, LABELS, CHANNELS, label_modulation=LATENT + 1, label_variation=True)
    raw = load_config("tiny").to_dict()
    with pytest.raises(UserError, match="label_variation needs label modulations"):
        config_from_dict({**raw, "label_variation": True})
    with pytest.raises(UserError, match="label_variation_kl must be >= 0"):
        config_from_dict({**raw, "label_variation_kl": 0.1})
    cfg = load_config("nih64-ca")
    assert cfg.label_variation and cfg.label_variation_kl > 0 and not cfg.label_loss_fakes


def test_label_variation_scale_widens_the_drawn_embedding_and_travels_with_the_generator(tmp_path) -> None:
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.export import export_onnx, onnx_parity

    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True).eval()
    _trained_modulation(G)
    with torch.no_grad():
        G.label_log_sigma.weight.normal_(0, 0.3)
    sick = torch.zeros(4, LABELS)
    sick[:, 5] = 1.0
    z = torch.randn(4, LATENT)
    with torch.no_grad():
        mu, sigma = G.label_map(sick), torch.exp(G.label_log_sigma(G.label_map(sick)))
        trained, as_trained = G.label_embedding_of(sick, z), G(z, sick)
        G.label_variation_scale = 1.5
        assert torch.allclose(G.label_embedding_of(sick, z), mu + 1.5 * sigma * z[:, :10], atol=1e-6)
        assert torch.allclose(G.label_embedding_of(sick, z) - mu, 1.5 * (trained - mu), atol=1e-6)
        wide = G(z, sick)
        assert wide.sub(as_trained).abs().max() > 1e-3  # the images change
        kl = G.label_kl(sick)
        G.label_variation_scale = 1.0
        assert torch.equal(G(z, sick), as_trained) and torch.equal(G.label_kl(sick), kl)  # training's KL
        G.label_variation_scale = 1.5
        names = tuple(f"l{i}" for i in range(LABELS))
        save_generator(tmp_path, G, generator_config(G, names, CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_variation_scale"] == 1.5 and torch.equal(loaded(z, sick), wide)
    export_onnx(loaded, tmp_path / "g.onnx")
    assert onnx_parity(loaded, tmp_path / "g.onnx") < 1e-4  # baked into the graph
    for bad in (0, -1.0, 4.5, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="label_variation_scale must be"):
            G.label_variation_scale = bad
    assert G.label_variation_scale == 1.5  # a refused value leaves the last one
    fixed = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10)
    fixed.label_variation_scale = 1.0
    with pytest.raises(ValueError, match="no label_variation"):
        fixed.label_variation_scale = 1.5
    assert "label_variation_scale" not in generator_config(fixed, names, CHANNELS)


def test_set_sampling_names_the_flag_and_sets_nothing_when_one_option_is_refused() -> None:
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True)
    G.set_sampling(label_guidance=2.0, label_variation_scale=1.25)
    assert (G.label_guidance, G.label_variation_scale) == (2.0, 1.25)
    G.set_sampling()  # None keeps both
    assert (G.label_guidance, G.label_variation_scale) == (2.0, 1.25)
    with pytest.raises(ValueError, match="^--label-variation-scale: label_variation_scale must be in"):
        G.set_sampling(label_guidance=3.0, label_variation_scale=9.0)
    assert (G.label_guidance, G.label_variation_scale) == (2.0, 1.25)  # the valid guidance was undone too
    with pytest.raises(ValueError, match="^--label-guidance: label_guidance names block 32"):
        G.set_sampling(label_guidance={"32": 2.0}, label_variation_scale=1.0)
    assert (G.label_guidance, G.label_variation_scale) == (2.0, 1.25)


def test_projection_critic_adds_a_term_linear_in_the_labels() -> None:
    torch.manual_seed(0)
    D = Discriminator(16, LABELS, CHANNELS, projection=True)
    with torch.no_grad():
        D.label_proj.normal_()
    x = torch.randn(4, 1, 16, 16)
    a, b = torch.rand(4, LABELS), torch.rand(4, LABELS)
    zero, _ = D(x, labels=torch.zeros(4, LABELS))
    sa, sb, sab = D(x, labels=a)[0], D(x, labels=b)[0], D(x, labels=a + b)[0]
    assert torch.allclose(sab - zero, (sa - zero) + (sb - zero), atol=1e-4)  # linear in c
    assert not torch.allclose(sa, zero)
    D.cond_gain = 0.0
    assert torch.equal(D(x, labels=a)[0], zero)
    with pytest.raises(AssertionError, match="needs the labels"):
        D(x)


def test_augmentation_is_identity_at_zero_strength_and_differentiable() -> None:
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    assert augment(x, 0.0, gen) is x
    for op in (translate, cutout, brightness_contrast):
        assert torch.allclose(op(x, 0.0, torch.Generator().manual_seed(1)), x, atol=1e-6)
    y = x.clone().requires_grad_(True)
    out = augment(y, 1.0, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and not torch.allclose(out, x)
    out.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0  # the generator's gradient passes through


def test_translation_moves_content_and_pads_black_without_flipping() -> None:
    x = torch.full((64, 1, 16, 16), -1.0)
    x[:, :, 4, 3] = 1.0  # one bright pixel, off centre
    out = translate(x, 1.0, torch.Generator().manual_seed(0))
    where = [(img[0] == 1.0).nonzero().tolist() for img in out]
    assert all(len(w) <= 1 for w in where)
    moved = {tuple(w[0]) for w in where if w}
    assert len(moved) > 5  # shifts differ between images
    assert all(abs(r - 4) <= 2 and abs(c - 3) <= 2 for r, c in moved)  # at most 1/8 of the side
    assert set(out.unique().tolist()) <= {-1.0, 1.0}


def test_augmentation_is_reproducible_from_the_run_generator() -> None:
    x = torch.rand(8, 1, 16, 16)
    a = augment(x, 0.5, torch.Generator().manual_seed(7))
    b = augment(x, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_adaptive_strength_rises_while_the_critic_overfits_and_falls_after() -> None:
    ada = AdaptiveStrength(target=0.6, speed_kimg=0.1, interval=2, p_max=0.8)
    real, fake = torch.ones(32), torch.zeros(32)  # every real above every fake: r_t = 1
    for _ in range(8):
        ada.update(real, fake)
    assert ada.rt == 1.0 and 0.0 < ada.p <= 0.8
    high = ada.p
    mixed = torch.cat([torch.ones(16), -torch.ones(16)])  # half above the fakes' mean: r_t = 0
    for _ in range(4):
        ada.update(mixed, fake)
    assert ada.rt == 0.0 and ada.p < high
    restored = AdaptiveStrength(target=0.6, speed_kimg=0.1, interval=2)
    restored.load_state(ada.state())
    assert restored.state() == ada.state()
    fixed = AdaptiveStrength(target=None, p=0.3)
    fixed.update(real, fake)
    assert fixed.p == 0.3
    assert restored.p != 0.3
    fixed.load_state(restored.state())  # a checkpoint of a run that adapted its strength
    assert fixed.p == 0.3 and fixed.rt == restored.rt  # the fixed strength is the config's


def test_rare_label_weights_over_represent_rare_labels() -> None:
    labels = torch.zeros(100, 3)
    labels[:50, 0] = 1.0  # common
    labels[50:52, 1] = 1.0  # rare: 2 rows
    # rows 52..99: no finding (48 rows)
    assert label_row_weights(labels, 0.0) is None
    w = label_row_weights(labels, 1.0)
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    share = {"common": w[:50].sum(), "rare": w[50:52].sum(), "none": w[52:].sum()}
    assert torch.allclose(torch.stack(list(share.values())), torch.full((3,), 1 / 3), atol=1e-6)
    half = label_row_weights(labels, 0.5)
    assert 0.02 < half[50:52].sum() < share["rare"]  # in between data and equal shares


def test_the_conditioning_settings_are_checked() -> None:
    raw = load_config("tiny").to_dict()
    for bad in (
        {"cond_ramp_start_kimg": 2.0, "cond_ramp_end_kimg": 1.0},
        {"augment_p": 1.5},
        {"label_modulation": -1},
        {"rare_label_power": -0.5},
    ):
        with pytest.raises(UserError):
            config_from_dict({**raw, **bad})
    cfg = config_from_dict({**raw, "cond_ramp_start_kimg": 1.0, "cond_ramp_end_kimg": 3.0})
    assert [cfg.cond_gain(n) for n in (0, 1000, 2000, 3000, 9000)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert load_config("tiny").cond_gain(0) == 1.0  # no ramp: conditioned from the start


def test_the_nih64_config_trains_adults_only_with_every_addition() -> None:
    cfg = load_config("nih64")
    assert cfg.patient_prefixes == ("nih_",) and cfg.projection and cfg.label_modulation > 0
    assert cfg.cond_ramp_end_kimg > cfg.cond_ramp_start_kimg and cfg.ada_target > 0


def test_mode_seeking_term_is_large_for_copies_and_small_for_diverse_pairs() -> None:
    from training.loss import mode_seeking_loss

    z = torch.randn(8, LATENT)
    same = torch.rand(1, 1, 8, 8).repeat(8, 1, 1, 1)  # every latent gives one image
    diverse = torch.rand(8, 1, 8, 8) * 2 - 1
    assert mode_seeking_loss(same, z) > 1e4
    assert mode_seeking_loss(diverse, z) < 10
    halves = torch.cat([diverse[:4], diverse[:4] + 0.5])  # pairs differ by exactly 0.5 per pixel
    gap = (z[:4] - z[4:]).abs().mean(1)
    assert torch.isclose(mode_seeking_loss(halves, z), 1 / ((0.5 / gap).mean() + 1e-5), rtol=1e-4)
    raw = load_config("tiny").to_dict()
    with pytest.raises(UserError):
        config_from_dict({**raw, "diversity_weight": -1.0})


def test_patient_weighting_gives_a_patient_of_many_images_the_weight_of_one() -> None:
    labels = torch.zeros(6, 2)
    labels[:, 0] = 1.0
    patients = ["a", "a", "a", "a", "b", "c"]  # patient a has four images
    w = label_row_weights(labels, 0.0, patients)
    assert torch.allclose(w[:4].sum(), w[4]) and torch.allclose(w[4], w[5])
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    both = label_row_weights(labels, 0.5, patients)
    assert torch.allclose(both, w)  # one label everywhere: the rare-label factor is the same for all


def test_the_label_head_can_learn_from_real_images_only() -> None:
    from training.loss import discriminator_loss

    real_logits = torch.randn(4, LABELS, requires_grad=True)
    fake_logits = torch.randn(4, LABELS, requires_grad=True)
    labels = torch.rand(4, LABELS)
    score = torch.randn(4)
    both = discriminator_loss(score, score, real_logits, fake_logits, labels, labels, 0.001, 1.0)
    reals = discriminator_loss(score, score, real_logits, fake_logits, labels, labels, 0.001, 1.0, False)
    assert both["label"].item() > reals["label"].item() > 0
    reals["total"].backward()
    assert fake_logits.grad is None and real_logits.grad.abs().sum() > 0  # fakes do not teach the head


def test_a_config_can_start_from_another_and_change_one_setting(tmp_path) -> None:
    base = load_config("nih64").to_dict()
    for name, change in (
        ("nih64-acreal", {"name": "nih64-acreal", "label_loss_fakes": False}),
        ("nih64-projection", {"name": "nih64-projection", "label_weight": 0.0}),
        ("nih64-acreal3", {"name": "nih64-acreal3", "label_loss_fakes": False, "label_weight": 3.0}),
        (
            "nih64-acreal-ms4",
            {"name": "nih64-acreal-ms4", "label_loss_fakes": False, "diversity_weight": 0.4},
        ),
    ):
        derived = load_config(name).to_dict()
        assert {k: v for k, v in derived.items() if k != "description"} == {
            **{k: v for k, v in base.items() if k != "description"},
            **change,
        }
    (tmp_path / "a.toml").write_text('base = "b.toml"\nname = "a"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nname = "b"\n')
    with pytest.raises(UserError, match="loop"):
        load_config(str(tmp_path / "a.toml"))
    (tmp_path / "c.toml").write_text('base = "no-such-config"\nname = "c"\n')
    with pytest.raises(UserError, match="no config 'no-such-config'"):
        load_config(str(tmp_path / "c.toml"))


def test_a_no_finding_spread_widens_the_images_without_a_label_whatever_the_guidance(tmp_path) -> None:
    """{"No_Finding": 2, "l2": 1.5}: an image without a label is drawn with its embedding's spread doubled,
    at guidance 1 and 2 alike; an image with a whole label is drawn exactly as without the No_Finding
    entry; half a label leaves half of no finding. Baked into ONNX, described first on the card."""
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.export import export_onnx, onnx_parity
    from training.networks import describe_label_variation_scale, parse_label_variation_scale

    names = [f"l{i}" for i in range(LABELS)]
    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True, label_names=names)
    G = _trained_modulation(G.eval())
    with torch.no_grad():
        G.label_log_sigma.weight.normal_(0, 0.3)
    labels = torch.zeros(5, LABELS)
    labels[1, 2] = 1.0  # l2: 1.5
    labels[2, 5] = 1.0  # l5, not named: as trained
    labels[3, 5] = 0.5  # half l5: half of no finding's widening, 1 + 0.5 * 1
    labels[4, 2] = 0.5  # half l2: no finding's half (0.5) is wider than l2's (0.25)
    z = torch.randn(5, LATENT)

    def at_guidance(w: float) -> torch.Tensor:
        G.label_guidance = w
        return G(z, labels)

    with torch.no_grad():
        mu = G.label_map(labels)
        noise = torch.exp(G.label_log_sigma(mu)) * z[:, :10]
        G.label_variation_scale = {"l2": 1.5}
        labels_only = {w: at_guidance(w) for w in (1.0, 2.0)}
        G.label_variation_scale = {"l2": 1.5, "No_Finding": 2.0}
        assert G.label_variation_scale == {"No_Finding": 2.0, "l2": 1.5}  # no finding first
        widened = G.label_embedding_of(labels, z)
        for row, scale in enumerate([2.0, 1.5, 1.0, 1.5, 1.5]):
            assert torch.allclose(widened[row], mu[row] + scale * noise[row], atol=1e-6), row
        drawn = {w: at_guidance(w) for w in (1.0, 2.0)}
    for w in (1.0, 2.0):  # whole labels: exactly as without No_Finding; no finding: wider
        assert torch.equal(drawn[w][1:3], labels_only[w][1:3]), w
        assert drawn[w][0].sub(labels_only[w][0]).abs().max() > 1e-3, w
    assert torch.allclose(drawn[2.0][0], drawn[1.0][0], atol=1e-6)  # guidance leaves no finding alone
    with torch.no_grad():
        save_generator(tmp_path, G, generator_config(G, tuple(names), CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_variation_scale"] == {"No_Finding": 2.0, "l2": 1.5}
        assert torch.equal(loaded(z, labels), drawn[2.0])
    export_onnx(loaded, tmp_path / "g.onnx")
    assert onnx_parity(loaded, tmp_path / "g.onnx") < 1e-4
    assert describe_label_variation_scale(loaded.label_variation_scale) == "No_Finding 2, l2 1.5"
    assert parse_label_variation_scale("No_Finding=1.1,l2=2") == {"No_Finding": 1.1, "l2": 2.0}
    with pytest.raises(ValueError, match="must be a number in \\[1, 4\\]"):
        G.label_variation_scale = {"No_Finding": 0.9}  # widened, never narrowed
    with pytest.raises(ValueError, match="unknown label 'no_finding'.*No_Finding: the images without a"):
        G.label_variation_scale = {"no_finding": 1.2}


def test_a_per_label_spread_widens_only_the_images_with_those_labels(tmp_path) -> None:
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.export import export_onnx, onnx_parity
    from training.networks import describe_label_variation_scale, parse_label_variation_scale

    names = [f"l{i}" for i in range(LABELS)]
    torch.manual_seed(0)
    G = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True, label_names=names)
    G = G.eval()
    _trained_modulation(G)
    with torch.no_grad():
        G.label_log_sigma.weight.normal_(0, 0.3)
    labels = torch.zeros(5, LABELS)
    labels[1, 2] = 1.0  # widened to 2
    labels[2, 5] = 1.0  # not named: as trained
    labels[3, [2, 7]] = 1.0  # two widened labels: the wider (3) wins
    labels[4, 7] = 0.5  # half a label: half its widening, 1 + 0.5 * 2
    z = torch.randn(5, LATENT)
    with torch.no_grad():
        mu = G.label_map(labels)
        noise = torch.exp(G.label_log_sigma(mu)) * z[:, :10]
        trained, as_trained = G.label_embedding_of(labels, z), G(z, labels)
        G.label_variation_scale = {"l7": 3.0, "l2": 2.0}
        assert G.label_variation_scale == {"l2": 2.0, "l7": 3.0}  # in the generator's label order
        widened = G.label_embedding_of(labels, z)
        for row, scale in enumerate([1.0, 2.0, 1.0, 3.0, 2.0]):
            assert torch.allclose(widened[row], mu[row] + scale * noise[row], atol=1e-6), row
        assert torch.equal(widened[[0, 2]], trained[[0, 2]])  # no finding and l5: exactly as trained
        wide = G(z, labels)
        assert torch.equal(wide[[0, 2]], as_trained[[0, 2]]) and wide[1].sub(as_trained[1]).abs().max() > 1e-3
        save_generator(tmp_path, G, generator_config(G, tuple(names), CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_variation_scale"] == {"l2": 2.0, "l7": 3.0}
        assert torch.equal(loaded(z, labels), wide)
    export_onnx(loaded, tmp_path / "g.onnx")
    assert onnx_parity(loaded, tmp_path / "g.onnx") < 1e-4  # baked into the graph
    assert describe_label_variation_scale(loaded.label_variation_scale) == "l2 2, l7 3"
    for bad, why in [
        ({"nope": 2.0}, "unknown label 'nope'"),
        ({"l2": 0.5}, "must be a number in \\[1, 4\\]"),
        ({"l2": 5.0}, "must be a number in \\[1, 4\\]"),
        ({}, "an empty mapping"),
    ]:
        with pytest.raises(ValueError, match=why):
            G.label_variation_scale = bad
    assert G.label_variation_scale == {"l2": 2.0, "l7": 3.0}  # a refused value leaves the last one
    with pytest.raises(ValueError, match="^--label-variation-scale: .*unknown label"):
        G.set_sampling(label_guidance=3.0, label_variation_scale={"x": 2.0})
    assert (G.label_guidance, G.label_variation_scale) == (1.0, {"l2": 2.0, "l7": 3.0})
    G.label_variation_scale = 1.0  # back to one number: the per-label widening is gone
    assert torch.equal(G.label_embedding_of(labels, z), trained)
    unnamed = Generator(16, LATENT, LABELS, CHANNELS, label_modulation=10, label_variation=True)
    with pytest.raises(ValueError, match="needs the generator's label names"):
        unnamed.label_variation_scale = {"l2": 2.0}
    assert parse_label_variation_scale("1.25") == 1.25
    assert parse_label_variation_scale(" l2=2, l7=1.5") == {"l2": 2.0, "l7": 1.5}
    for text, why in [
        ("0", "must be a number above 0"),
        ("wide", "expected a number such as 1.2"),
        ("l2=x", "is not LABEL=NUMBER"),
        ("=2", "is not LABEL=NUMBER"),
        ("l2=0.8", "must be in \\[1, 4\\]"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_label_variation_scale(text)
