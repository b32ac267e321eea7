"""Shapes, the fade-in blend, equalized learning rate and conditioning of the PGGAN networks."""

from __future__ import annotations

import pytest
import torch

from training.networks import Discriminator, Generator, MinibatchStd, downsample2, level_of, upsample2

CHANNELS = {4: 8, 8: 8, 16: 6, 32: 4}
LATENT, LABELS = 12, 14


@pytest.fixture(scope="module")
def nets() -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(32, LATENT, LABELS, CHANNELS), Discriminator(32, LABELS, CHANNELS, mbstd_group=4)


@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0])
def test_shapes_at_every_stage_and_during_fade_in(nets, resolution: int, alpha: float) -> None:
    G, D = nets
    z, labels = torch.randn(8, LATENT), torch.rand(8, LABELS)
    images = G(z, labels, level_of(resolution), alpha)
    assert images.shape == (8, 1, resolution, resolution)
    score, logits = D(images, level_of(resolution), alpha)
    assert score.shape == (8,) and logits.shape == (8, LABELS)
    assert torch.isfinite(images).all() and torch.isfinite(score).all()


def test_generator_fade_in_blends_previous_and_new_resolution(nets) -> None:
    G, _ = nets
    z, labels = torch.randn(4, LATENT), torch.rand(4, LABELS)
    old = upsample2(G(z, labels, level=3, alpha=1.0))  # 16 px output, enlarged to 32
    new = G(z, labels, level=4, alpha=1.0)
    assert torch.allclose(G(z, labels, level=4, alpha=0.0), old, atol=1e-6)
    mid = G(z, labels, level=4, alpha=0.25)
    assert torch.allclose(mid, 0.75 * old + 0.25 * new, atol=1e-5)


def test_discriminator_fade_in_at_zero_sees_only_the_downsampled_image(nets) -> None:
    _, D = nets
    images = torch.randn(4, 1, 32, 32)
    at_zero, _ = D(images, level=4, alpha=0.0)
    lower, _ = D(downsample2(images), level=3, alpha=1.0)
    assert torch.allclose(at_zero, lower, atol=1e-5)
    # a checkerboard averages to zero in every 2x2 cell: invisible at alpha 0, seen at alpha 1
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0  # [32, 32] of +-1
    detailed = images + 0.5 * checker
    assert torch.allclose(D(detailed, level=4, alpha=0.0)[0], at_zero, atol=1e-5)
    assert not torch.allclose(D(detailed, level=4, alpha=1.0)[0], D(images, level=4, alpha=1.0)[0], atol=1e-3)


def test_label_vector_changes_the_output(nets) -> None:
    G, _ = nets
    z = torch.randn(2, LATENT)
    healthy = G(z, torch.zeros(2, LABELS))
    cardiomegaly = torch.zeros(2, LABELS)
    cardiomegaly[:, 1] = 1.0
    diff = (G(z, cardiomegaly) - healthy).abs().mean().item()
    assert diff > 1e-3, diff
    # while the same latent and labels give the same image
    assert torch.equal(G(z, cardiomegaly), G(z, cardiomegaly))


def test_equalized_learning_rate_keeps_raw_weights_unit_scale() -> None:
    G = Generator(16, 512, LABELS, {4: 128, 8: 128, 16: 64})
    conv = G.blocks["16"].conv0
    assert abs(conv.weight.std().item() - 1.0) < 0.05  # stored N(0, 1)
    assert conv.scale == pytest.approx(2**0.5 / (128 * 9) ** 0.5)  # scaled by He's constant at run time


def test_minibatch_std_appends_one_feature_map_that_reflects_variation() -> None:
    layer = MinibatchStd(4)
    same = torch.ones(8, 3, 4, 4)
    out = layer(same)
    assert out.shape == (8, 4, 4, 4)
    assert out[:, 3].abs().max() < 1e-3  # identical images: no spread
    assert layer(torch.randn(8, 3, 4, 4))[:, 3].mean() > 0.5


def test_label_embedding_generator_round_trips_and_folds(tmp_path) -> None:
    from training.checkpoint import generator_config, load_generator, save_generator
    from training.networks import fold_equalized_lr

    torch.manual_seed(1)
    G = Generator(32, LATENT, LABELS, CHANNELS, label_embedding=True).eval()
    assert G.embed.weight.shape == (LATENT, LABELS) and G.dense.weight.shape[1] == 2 * LATENT
    z = torch.randn(4, LATENT)
    healthy, sick = torch.zeros(4, LABELS), torch.zeros(4, LABELS)
    sick[:, 1] = 1.0
    with torch.no_grad():
        out = G(z, sick)
        assert out.shape == (4, 1, 32, 32) and not torch.allclose(out, G(z, healthy))
        save_generator(tmp_path, G, generator_config(G, tuple(f"l{i}" for i in range(LABELS)), CHANNELS))
        loaded, config = load_generator(tmp_path)
        assert config["label_embedding"] is True and torch.equal(loaded(z, sick), out)
        assert torch.allclose(fold_equalized_lr(loaded)(z, sick), out, atol=1e-5)
