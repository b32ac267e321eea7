"""WGAN-GP with drift (Gulrajani et al. 2017; Karras et al. 2018) plus the auxiliary classifier's
per-label sigmoid cross-entropy, as in the paper's conditional PGGAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.networks import Discriminator


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean per-label sigmoid cross-entropy; labels are continuous targets in 0..1."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def gradient_penalty(
    D: Discriminator,
    reals: torch.Tensor,
    fakes: torch.Tensor,
    level: int,
    alpha: float,
    generator: torch.Generator,
    real_labels: torch.Tensor | None = None,
    fake_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """(||grad D(x_hat)|| - 1)^2 at random points between reals and fakes, always in fp32.

    A projection critic also needs labels there: they are blended with the same weights as the images.
    """
    eps = torch.rand(reals.shape[0], 1, 1, 1, generator=generator).to(reals.device)  # CPU generator
    mixed = torch.lerp(reals.float(), fakes.float(), eps).requires_grad_(True)  # [N, 1, R, R]
    labels = None
    if real_labels is not None and fake_labels is not None:
        labels = torch.lerp(real_labels.float(), fake_labels.float(), eps.view(-1, 1))  # [N, L]
    with torch.autocast(device_type=reals.device.type, enabled=False):
        score, _ = D(mixed, level, alpha, labels)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)  # [N]
    return (norm - 1.0).square().mean()


def discriminator_loss(
    real_score: torch.Tensor,
    fake_score: torch.Tensor,
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    real_labels: torch.Tensor,
    fake_labels: torch.Tensor,
    drift: float,
    label_weight: float,
    label_loss_fakes: bool = True,
) -> dict[str, torch.Tensor]:
    """The critic's loss without the penalty: Wasserstein estimate, drift and the label loss, on real
    and generated images (ACGAN), or on real images alone when `label_loss_fakes` is False.

    On fakes too, the critic's label head can learn whatever mark the generator uses for a label, and
    the two agree on a code that need not look like the disease. On reals alone the head only learns
    what real radiographs with the label look like, and the generator is pushed towards that."""
    wasserstein = fake_score.float().mean() - real_score.float().mean()
    drift_term = real_score.float().square().mean()
    labels = label_loss(real_logits, real_labels)
    if label_loss_fakes:
        labels = labels + label_loss(fake_logits, fake_labels)
    total = wasserstein + drift * drift_term + label_weight * labels
    return {"total": total, "wasserstein": wasserstein, "label": labels}


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN's term: the first and second half of the batch share label vectors; it is large when
    different latents give the same image. images: [2M, 1, R, R], z: [2M, Z]."""
    half = images.shape[0] // 2
    image_gap = (images[:half].float() - images[half:].float()).abs().mean(dim=(1, 2, 3))  # [M]
    latent_gap = (z[:half].float() - z[half:].float()).abs().mean(dim=1)  # [M]
    return 1.0 / ((image_gap / latent_gap).mean() + 1e-5)


def generator_loss(
    fake_score: torch.Tensor, fake_logits: torch.Tensor, fake_labels: torch.Tensor, label_weight: float
) -> dict[str, torch.Tensor]:
    labels = label_loss(fake_logits, fake_labels)
    total = -fake_score.float().mean() + label_weight * labels
    return {"total": total, "label": labels}
