"""The conditional progressive-growing GAN: generator and discriminator (Karras et al. 2018, as
conditioned by Han et al. 2020).

Both networks hold the layers of every resolution from the start; `level` says how many of them
are in use (level 1 = 4x4, level k = 4 * 2**(k-1) px) and `alpha` in 0..1 fades the newest one in.
All layers use the equalized learning rate: weights are drawn from N(0, 1) and scaled at run time
by He's constant, so that Adam updates every layer at the same speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2


def level_of(resolution: int) -> int:
    """Level of a resolution: 4 -> 1, 8 -> 2, ..., 64 -> 5."""
    return int(math.log2(resolution)) - 1


def resolution_of(level: int) -> int:
    return 4 * 2 ** (level - 1)


class EqualizedLinear(nn.Module):
    """A dense layer with the equalized learning rate.

    Args:
        in_features:  input width.
        out_features: output width.
        gain:         He gain; sqrt(2) before a leaky ReLU, 1 before a linear output.
    """

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.scale == 1.0 else self.weight * self.scale  # 1.0 once folded
        return F.linear(x, weight, self.bias)


class EqualizedConv2d(nn.Module):
    """A same-padded convolution with the equalized learning rate.

    Args:
        in_channels:  input feature maps.
        out_channels: output feature maps.
        kernel_size:  square kernel side (1 or 3 here).
        gain:         He gain; sqrt(2) before a leaky ReLU, 1 for toRGB.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.scale == 1.0 else self.weight * self.scale  # 1.0 once folded
        return F.conv2d(x, weight, self.bias, padding=self.padding)


@torch.no_grad()
def fold_equalized_lr(net: nn.Module) -> nn.Module:
    """Multiply each equalized layer's run-time scale into its weight (in place) and set it to 1.

    The outputs stay the same (up to float rounding); an exported graph then holds the weights
    under their parameter names instead of anonymous folded constants.
    """
    for layer in net.modules():
        if isinstance(layer, EqualizedLinear | EqualizedConv2d) and layer.scale != 1.0:
            layer.weight.mul_(layer.scale)
            layer.scale = 1.0
    return net


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector to unit mean square (over dim 1)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


class LabelModulation(nn.Module):
    """Conditional normalisation: a per-channel scale and shift of pixel-normalised features, computed
    from the label embedding (Dumoulin et al. 2017; de Vries et al. 2017).

    The output layer starts at zero, so a new network is unconditional until it learns otherwise, and
    `gain` (0..1, set by the training loop) ramps the labels' effect in.

    Args:
        embed_dim: width of the label embedding it reads.
        channels:  feature maps it modulates.
    """

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.affine = EqualizedLinear(embed_dim, 2 * channels, gain=1.0)
        with torch.no_grad():
            self.affine.weight.zero_()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        scale, shift = self.affine(embedding).to(x.dtype).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1.0 + gain * scale) + gain * shift  # scale, shift: [N, C, 1, 1]


MAX_LABEL_GUIDANCE = 10.0
MAX_LABEL_VARIATION_SCALE = 4.0  # label_variation_scale: (0, 4]; 1.5 already spreads some labels past real
GUIDANCE_INPUT = "input"  # the key of the labels concatenated with the latent, beside the blocks' sides
GUIDANCE_ELSEWHERE = "*"  # the key of the strength at every place not named (1 when absent)

LabelGuidance = float | dict[str, float]
LabelSpread = float | dict[str, float]  # label_variation_scale: one number, or a wider spread per label
# a per-label spread's key for the images without a label (the all-zero vector); the twin of
# thoraxclient.model_card's (this module travels alone in the TorchServe archive)
NO_FINDING = "No_Finding"


def _checked_weight(w: object, where: str) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 < w <= MAX_LABEL_GUIDANCE:
        raise ValueError(f"label_guidance{where} must be a number in (0, {MAX_LABEL_GUIDANCE:g}], got {w!r}")
    return float(w)


def is_guidance_place(key: str) -> bool:
    """Whether a key of a label guidance mapping is a place ("input" or a block side), not "*" or a label."""
    return key == GUIDANCE_INPUT or key.isdigit()


def checked_label_guidance(w: object, label_names: list[str] | None = None) -> LabelGuidance:
    """A label guidance, checked: a number in (0, 10] for every place the labels enter, or a mapping of
    numbers in (0, 10] with keys of three kinds:
    - places: "input" (the labels beside the latent) and block sides ("4", "8", ..., the modulations of
      that block; "4" includes the 4x4 convolution's);
    - "*": every place not named (1, as trained, when absent);
    - label names (needs `label_names`): the strength for images with that label, at every place, in
      place of the places' own (see `Generator`); e.g. {"*": 2, "Pneumonia": 1}.
    A mapping is returned with string keys: input, then sides, then "*", then labels in the generator's
    order. ValueError names what is wrong."""
    if not isinstance(w, dict):
        return _checked_weight(w, "")
    if not w:
        raise ValueError("label_guidance: an empty mapping (give a number, or places such as 16=2)")
    names = list(label_names or [])
    out = {}
    for key, value in w.items():
        key = str(key).strip()
        side_ok = key.isdigit() and int(key) >= 4 and int(key) & (int(key) - 1) == 0
        if key not in (GUIDANCE_INPUT, GUIDANCE_ELSEWHERE) and not side_ok and key not in names:
            labels = f", or one of this generator's labels ({', '.join(names)})" if names else ""
            raise ValueError(
                f"label_guidance: unknown place {key!r}: use {GUIDANCE_INPUT!r}, a block side "
                f"(4, 8, 16, ...){labels}"
            )
        where = f" at {key}" if is_guidance_place(key) else f" for {key}"
        out[key] = _checked_weight(value, " elsewhere" if key == GUIDANCE_ELSEWHERE else where)

    def order(key: str) -> tuple[int, int]:
        if key == GUIDANCE_INPUT:
            return (0, 0)
        if key.isdigit():
            return (1, int(key))
        return (2, 0) if key == GUIDANCE_ELSEWHERE else (3, names.index(key))

    return dict(sorted(out.items(), key=lambda kv: order(kv[0])))


def _number_or_pairs(text: str, number: str, pairs: str, pair: str) -> float | dict[str, float]:
    """A sampling option as typed: one number, or KEY=NUMBER pairs as a mapping of strings to floats,
    unchecked. ValueError says what was expected: `number` ("1.5"), `pairs` ("places such as
    16=2,32=1.5"), `pair` ("PLACE=NUMBER (e.g. 16=2)")."""
    text = text.strip()
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number such as {number}, or {pairs}; got {text!r}") from None
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not {pair}") from None
        if not sep or not key.strip():
            raise ValueError(f"{part.strip()!r} is not {pair}")
    return out


def parse_label_guidance(text: str) -> LabelGuidance:
    """`--label-guidance` as typed: "1.5" (everywhere), "16=2.5,32=1.5" (those places; the others 1), or
    either with labels: "2,Pneumonia=1" (every place 2; images with Pneumonia 1). Label names are
    checked against the model later."""
    parts = [p.strip() for p in text.split(",")]
    bare = [p for p in parts if "=" not in p]
    if "=" not in text or len(bare) != 1:  # one number, or pairs alone (a bad part is named there)
        value = _number_or_pairs(text, "1.5", "places such as 16=2,32=1.5", "PLACE=NUMBER (e.g. 16=2)")
        return checked_label_guidance(value, _labels_in(value))
    try:
        elsewhere = float(bare[0])
    except ValueError:
        raise ValueError(f"{bare[0]!r} is not a number or PLACE=NUMBER (e.g. 16=2)") from None
    value = _number_or_pairs(
        ",".join(p for p in parts if "=" in p), "1.5", "places such as 16=2", "PLACE=NUMBER (e.g. 16=2)"
    )
    assert isinstance(value, dict)
    if GUIDANCE_ELSEWHERE in value:
        raise ValueError(f"{text.strip()!r}: give the strength elsewhere once, as a number or as *=W")
    value = {GUIDANCE_ELSEWHERE: elsewhere, **value}
    return checked_label_guidance(value, _labels_in(value))


def _labels_in(value: float | dict[str, float]) -> list[str]:
    """The keys of a typed guidance that are neither places nor "*": label names, checked later."""
    if not isinstance(value, dict):
        return []
    return [k for k in value if not is_guidance_place(k) and k != GUIDANCE_ELSEWHERE]


def checked_label_variation_scale(scale: object, label_names: list[str] | None) -> LabelSpread:
    """A label variation scale, checked: a number in (0, 4] for every label, or a mapping from label
    names to numbers in [1, 4] (a wider spread for those labels; the others as trained), where
    "No_Finding" names the images without a label. A mapping is returned with No_Finding first, then the
    generator's label order. ValueError names what is wrong."""
    if not isinstance(scale, dict):
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"label_variation_scale must be a number, got {scale!r}")
        if not 0 < scale <= MAX_LABEL_VARIATION_SCALE:
            raise ValueError(
                f"label_variation_scale must be in (0, {MAX_LABEL_VARIATION_SCALE:g}], got {scale:g}"
            )
        return float(scale)
    if not scale:
        raise ValueError("label_variation_scale: an empty mapping (give a number, or labels such as Edema=2)")
    if label_names is None:
        raise ValueError("label_variation_scale per label needs the generator's label names")
    out = {}
    for name, value in scale.items():
        name = str(name).strip()
        if name not in label_names and name != NO_FINDING:
            raise ValueError(
                f"label_variation_scale: unknown label {name!r}; this generator's labels are "
                + ", ".join(label_names)
                + f" ({NO_FINDING}: the images without a label)"
            )
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not ok or not 1.0 <= value <= MAX_LABEL_VARIATION_SCALE:
            raise ValueError(
                f"label_variation_scale for {name} must be a number in [1, {MAX_LABEL_VARIATION_SCALE:g}] "
                f"(a label's spread is widened, never narrowed), got {value!r}"
            )
        out[name] = float(value)
    return {n: out[n] for n in (NO_FINDING, *label_names) if n in out}


def parse_label_variation_scale(text: str) -> LabelSpread:
    """`--label-variation-scale` as typed: "1.2" (every label) or "Edema=2,Cardiomegaly=1.5" (those
    labels wider; the others as trained). Label names are checked against the model later."""
    value = _number_or_pairs(
        text, "1.2", "labels such as Edema=2,Cardiomegaly=1.5", "LABEL=NUMBER (e.g. Edema=2)"
    )
    if not isinstance(value, dict):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{text.strip()} must be a number above 0")
        return value  # its range is checked against the model, with the flag named
    for key, number in value.items():
        if not math.isfinite(number) or not 1.0 <= number <= MAX_LABEL_VARIATION_SCALE:
            raise ValueError(
                f"'{key}={number:g}': a label's spread must be in [1, {MAX_LABEL_VARIATION_SCALE:g}]"
            )
    return value


def describe_label_variation_scale(scale: LabelSpread) -> str:
    """A label variation scale in words: "1.2", or per label "Cardiomegaly 1.5, Edema 2" (the others: 1).
    The twin of thoraxclient.model_card's (this module travels alone in the TorchServe archive)."""
    if isinstance(scale, dict):
        return ", ".join(f"{k} {v:g}" for k, v in scale.items())
    return f"{scale:g}"


def guidance_weight(guidance: LabelGuidance, place: str) -> float:
    """The guidance at one place ("input" or a block side as a string), for images without a label of
    their own strength."""
    if isinstance(guidance, float | int):
        return guidance
    return guidance.get(place, guidance.get(GUIDANCE_ELSEWHERE, 1.0))


def guidance_by_label(guidance: LabelGuidance) -> dict[str, float]:
    """The labels a guidance gives a strength of their own, and those strengths (none for a number)."""
    if isinstance(guidance, float | int):
        return {}
    return {k: v for k, v in guidance.items() if not is_guidance_place(k) and k != GUIDANCE_ELSEWHERE}


def is_guided(guidance: LabelGuidance) -> bool:
    """Whether any place is drawn other than as trained. The twin of thoraxclient.model_card's
    is_label_guided: this module travels alone in the TorchServe archive, without thoraxclient."""
    return any(v != 1.0 for v in guidance.values()) if isinstance(guidance, dict) else guidance != 1.0


class GeneratorBlock(nn.Module):
    """Doubles the resolution: nearest upsampling, then two 3x3 convolutions with pixel norm, each
    followed by a label modulation when the generator has one."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int = 0) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        if embed_dim:
            self.mod0 = LabelModulation(embed_dim, out_channels)
            self.mod1 = LabelModulation(embed_dim, out_channels)
        self.modulated = bool(embed_dim)

    def forward(
        self, x: torch.Tensor, embedding: torch.Tensor | None = None, gain: float = 1.0
    ) -> torch.Tensor:
        x = upsample2(x)  # [N, Cin, 2H, 2W]
        x = pixel_norm(lrelu(self.conv0(x)))  # [N, Cout, 2H, 2W]
        if self.modulated:
            x = self.mod0(x, embedding, gain)
        x = pixel_norm(lrelu(self.conv1(x)))
        if self.modulated:
            x = self.mod1(x, embedding, gain)
        return x


class Generator(nn.Module):
    """Conditional PGGAN generator: (latent, labels) -> one-channel image in about [-1, 1].

    Args:
        resolution: final image side (a power of two >= 4).
        latent_dim: size of the Gaussian latent (512 in the paper).
        num_labels: size of the label vector (14 NIH labels), each continuous in 0..1.
        channels:   feature maps per resolution, e.g. {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}.
        label_embedding: False (the paper): the labels are concatenated to the latent as they are, 14 of
                    526 inputs. True: a dense layer first maps them to latent_dim features, normalised
                    apart from the latent, so that labels and latent enter with equal weight.
        label_modulation: width of a label embedding (a two-layer mapping of the label vector) that
                    scales and shifts the features after every convolution of every block, 4x4
                    included (conditional normalisation); 0 (the paper) conditions at the input only.
        label_modulation_from: the smallest block side the modulations reach (4: every block); e.g. 16
                    leaves the 4 and 8 px blocks, where the latent lays out the image, to the latent
                    and the input labels.
        label_guidance: how far past a trained label's effect the network draws (1.0, as trained). At w,
                    the labels at the input are w * labels and the modulations' embedding is
                    e(0) + w * (e(labels) - e(0)), so an all-zero vector (no finding) draws as it was
                    trained to, and each label's change from there is multiplied by w in the spaces
                    where it enters (guidance, as in classifier-free guidance, at sampling time only).
                    A mapping sets w per place ("input", or a block side such as "16"; the others 1),
                    e.g. {"16": 2.5} (`nih64/5`): the labels' effect on the 16x16 block alone; "*"
                    sets every place not named. Label names give those labels a strength of their own
                    ({"*": 2, "Pneumonia": 1}, `nih128/6`): an image takes w + v (g - w) at a place of
                    strength w, for the label (value v, strength g) whose v |g - w| is largest, so
                    images without those labels draw exactly as at w. Checked again whenever it is set.
        label_variation: conditioning augmentation (Zhang et al. 2017, StackGAN): the modulations'
                    embedding is drawn, not fixed, as mu(labels) + sigma(labels) * z[:label_modulation]
                    (the latent's first components), so one label vector gives a spread of disease
                    looks that varies with the latent; `label_kl` is its training regulariser.
        label_variation_scale: with `label_variation`, the sigma of that draw is multiplied by this
                    at sampling time (1.0, as trained): a temperature for the variety within a label.
                    Label guidance moves mu away from no finding and costs variety; a scale above 1
                    gives some back. A mapping from label names to scales in [1, 4] widens only those
                    labels (e.g. {"Edema": 2.0}): an image's scale is 1 + max over its labels of
                    label value * (scale - 1), so no finding stays as trained and an image with two
                    widened labels takes the wider. Checked again whenever it is set.
        label_names: the names of the labels, in order (a per-label `label_variation_scale` names
                    them); None for a generator that never takes one.

    `cond_gain` (a plain attribute, 1.0 outside training) scales every conditional term: the labels
    at the input and the modulations. The training loop ramps it from 0 to 1 so that the network
    first learns radiographs, then what the labels change in them.
    """

    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        num_labels: int,
        channels: dict[int, int],
        label_embedding: bool = False,
        label_modulation: int = 0,
        label_guidance: LabelGuidance = 1.0,
        label_modulation_from: int = 4,
        label_variation: bool = False,
        label_variation_scale: LabelSpread = 1.0,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{len(label_names)} label names for {num_labels} labels")
        self.label_names = list(label_names) if label_names is not None else None
        if label_variation and not 0 < label_modulation <= latent_dim:
            raise ValueError(
                "label_variation draws the label embedding with the latent's first components: it needs "
                f"0 < label_modulation <= latent_dim, got {label_modulation} and {latent_dim}"
            )
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.num_labels = num_labels
        self.label_embedding = label_embedding
        self.label_modulation = label_modulation
        self.label_modulation_from = label_modulation_from
        self.label_variation = label_variation
        self.cond_gain = 1.0
        self.max_level = level_of(resolution)
        c4 = channels[4]
        if label_modulation:
            self.label_map = nn.Sequential(
                EqualizedLinear(num_labels, label_modulation),
                nn.LeakyReLU(LRELU_SLOPE),
                EqualizedLinear(label_modulation, label_modulation),
                nn.LeakyReLU(LRELU_SLOPE),
            )
            if label_variation:  # log sigma of the embedding, from the same features as mu; starts at 0
                self.label_log_sigma = EqualizedLinear(label_modulation, label_modulation, gain=1.0)
                with torch.no_grad():
                    self.label_log_sigma.weight.zero_()
            if label_modulation_from <= 4:
                self.mod4 = LabelModulation(label_modulation, c4)
        if label_embedding:
            self.embed = EqualizedLinear(num_labels, latent_dim, gain=1.0)
        label_width = latent_dim if label_embedding else num_labels
        # 4x4: dense from the normalised (latent, labels) vector to a 4x4 map, then one 3x3 conv.
        self.dense = EqualizedLinear(latent_dim + label_width, c4 * 16, gain=math.sqrt(2) / 4)
        self.conv4 = EqualizedConv2d(c4, c4, 3)
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict({"4": EqualizedConv2d(c4, 1, 1, gain=1.0)})
        for level in range(2, self.max_level + 1):
            res = resolution_of(level)
            embed = label_modulation if res >= label_modulation_from else 0
            self.blocks[str(res)] = GeneratorBlock(channels[res // 2], channels[res], embed)
            self.to_rgb[str(res)] = EqualizedConv2d(channels[res], 1, 1, gain=1.0)
        self.label_guidance = label_guidance
        self.label_variation_scale = label_variation_scale

    @property
    def label_variation_scale(self) -> LabelSpread:
        return self._label_variation_scale

    @label_variation_scale.setter
    def label_variation_scale(self, scale: LabelSpread) -> None:
        scale = checked_label_variation_scale(scale, self.label_names)
        if scale != 1.0 and not self.label_variation:
            raise ValueError(
                "label_variation_scale scales the spread of a label embedding drawn with the latent: this "
                "generator's embedding is fixed (no label_variation)"
            )
        self._label_variation_scale = scale
        # per label: each label's widening (scale - 1), 0 for the labels not named; [num_labels]
        self._label_widening = (  # a mapping was checked against label_names, so they are there
            torch.tensor([scale.get(n, 1.0) - 1.0 for n in self.label_names])
            if isinstance(scale, dict)
            else None
        )
        # the images without a label: their widening, 0 when not named
        self._no_finding_widening = scale.get(NO_FINDING, 1.0) - 1.0 if isinstance(scale, dict) else 0.0

    @property
    def label_guidance(self) -> LabelGuidance:
        return self._label_guidance

    @label_guidance.setter
    def label_guidance(self, w: LabelGuidance) -> None:
        w = checked_label_guidance(w, self.label_names)
        if isinstance(w, dict):
            blocks = [k for k in w if k.isdigit()]
            if blocks and not self.label_modulation:
                raise ValueError(
                    f"label_guidance at block {blocks[0]}: this generator's labels enter at the input only "
                    f"(no label modulation); give a number or {GUIDANCE_INPUT}=W"
                )
            unmodulated = [k for k in blocks if int(k) < self.label_modulation_from]
            if unmodulated:
                raise ValueError(
                    f"label_guidance at block {unmodulated[0]}: this generator's labels modulate the blocks "
                    f"from {self.label_modulation_from} px on only"
                )
            too_large = [k for k in blocks if int(k) > self.resolution]
            if too_large:
                raise ValueError(
                    f"label_guidance names block {too_large[0]}, but this generator's largest "
                    f"is {self.resolution}"
                )
        self._label_guidance = w
        # per label: each label's own strength, 0 for the labels not named (a strength is above 0);
        # [num_labels]; a mapping was checked against label_names, so a label key means they are there
        own = guidance_by_label(w)
        self._label_strength = torch.tensor([own.get(n, 0.0) for n in self.label_names]) if own else None

    def _guidance_per_image(self, w: float, labels: torch.Tensor) -> torch.Tensor | float:
        """The strength at a place whose own is `w`, for each image: [N, 1], or `w` itself when no label
        has a strength of its own. An image with such labels takes w + v (g - w) for the one of them
        whose v |g - w| is largest (g its strength, v its value; the first in label order on a tie):
        g for a whole label, w for none, and between the two for a fraction of one."""
        if self._label_strength is None:
            return w
        strength = self._label_strength.to(labels)
        named = (strength > 0).to(labels)  # [L]: 1 for the labels with a strength of their own
        shift = labels.clamp(0.0, 1.0) * named * (strength - w)  # [N, L]; 0 for the labels not named
        pick = shift.abs().argmax(dim=1, keepdim=True)  # [N, 1]
        return w + shift.gather(1, pick)  # [N, 1]

    def set_sampling(
        self, *, label_guidance: LabelGuidance | None = None, label_variation_scale: LabelSpread | None = None
    ) -> None:
        """Set the sampling options given (None keeps one as it is), for `thorax sample`, evaluate and
        export alike. A value this generator cannot take raises ValueError naming the option by its
        command-line flag, and leaves both options as they were."""
        before = self.label_guidance, self.label_variation_scale
        for flag, attr, value in (
            ("--label-guidance", "label_guidance", label_guidance),
            ("--label-variation-scale", "label_variation_scale", label_variation_scale),
        ):
            if value is None:
                continue
            try:
                setattr(self, attr, value)
            except ValueError as exc:  # the value, or a place or spread this generator does not have
                self.label_guidance = before[0]  # the setters: each keeps its per-label tensors in step
                self.label_variation_scale = before[1]
                raise ValueError(f"{flag}: {exc}") from None

    @classmethod
    def from_config(cls, config: dict) -> Generator:
        """The generator a `generator.json` describes (random weights; load its safetensors next). The
        one reader of that file's network settings, for `training.checkpoint` and the TorchServe
        handler alike (this module travels alone in the archive)."""
        return cls(
            config["resolution"],
            config["latent_dim"],
            len(config["label_names"]),
            {int(k): v for k, v in config["channels"].items()},
            label_embedding=config.get("label_embedding", False),
            label_modulation=config.get("label_modulation", 0),
            label_guidance=config.get("label_guidance", 1.0),
            label_modulation_from=config.get("label_modulation_from", 4),
            label_variation=config.get("label_variation", False),
            label_variation_scale=config.get("label_variation_scale", 1.0),
            label_names=config.get("label_names"),
        )

    def label_embedding_of(
        self, labels: torch.Tensor, z: torch.Tensor, no_finding_share: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The modulations' embedding [N, E]: the label mapping's output, or with `label_variation` that
        output plus sigma(labels) times the latent's first E components (times `label_variation_scale`;
        one per image for a per-label scale).

        With a per-label scale naming No_Finding, an image's share of no finding (1 minus its largest
        label, or `no_finding_share` [N, 1] when given) takes that share of No_Finding's widening, where it
        is wider than its labels'. The guidance's no-finding anchor passes the image's own share, so that
        an image without a label is drawn with its widening whatever the guidance."""
        mu = self.label_map(labels)
        if not self.label_variation:
            return mu
        sigma = torch.exp(self.label_log_sigma(mu))
        if self._label_widening is not None:  # [N, 1]: 1 + the widest of the image's labels' widenings
            widening = self._label_widening.to(device=labels.device, dtype=labels.dtype)
            present = labels.clamp(0.0, 1.0)
            wide = (present * widening).amax(dim=1, keepdim=True)
            if self._no_finding_widening:
                share = _no_finding_share(labels) if no_finding_share is None else no_finding_share
                wide = torch.maximum(wide, self._no_finding_widening * share)
            sigma = (1.0 + wide).to(sigma.dtype) * sigma
        elif self.label_variation_scale != 1.0:
            sigma = self.label_variation_scale * sigma
        return mu + sigma * z[:, : self.label_modulation].to(mu.dtype)

    def label_kl(self, labels: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) of `label_variation`'s embedding, per component, batch mean:
        StackGAN's regulariser, which keeps sigma from shrinking to a fixed look per label."""
        mu = self.label_map(labels)
        log_sigma = self.label_log_sigma(mu).float()
        mu = mu.float()
        return 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1.0 - 2 * log_sigma).mean()

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor, level: int | None = None, alpha: float = 1.0
    ) -> torch.Tensor:
        """z: [N, latent_dim], labels: [N, num_labels] -> images [N, 1, R, R] with R = 4 * 2**(level-1)."""
        level = self.max_level if level is None else level
        assert z.shape[1] == self.latent_dim and labels.shape[1] == self.num_labels, (z.shape, labels.shape)
        labels = labels.to(z.dtype)
        gain = self.cond_gain
        embedding = self.label_embedding_of(labels, z) if self.label_modulation else None  # [N, E]
        guidance = self.label_guidance
        own = self._label_strength is not None and is_guided(guidance)  # labels with their own strength
        embedding_at: dict[str, torch.Tensor | None] = {}  # block side -> that block's embedding
        if is_guided(guidance) and embedding is not None:
            # no finding's embedding [N, E], at the same shape, so the same kernels: an all-zero row's
            # embedding is then exactly its drawn one (with No_Finding's spread, at the image's share)
            share = _no_finding_share(labels) if self._no_finding_widening else None
            base = self.label_embedding_of(torch.zeros_like(labels), z, no_finding_share=share)
            guided: dict[float, torch.Tensor] = {}  # one embedding per strength
            for lv in range(1, self.max_level + 1):
                w = guidance_weight(guidance, str(resolution_of(lv)))
                if w != 1.0 or own:
                    if w not in guided:
                        guided[w] = base + self._guidance_per_image(w, labels) * (embedding - base)
                    embedding_at[str(resolution_of(lv))] = guided[w]
        if (w_input := guidance_weight(guidance, GUIDANCE_INPUT)) != 1.0 or own:
            # the input embedding is linear: w * labels is its guided form too
            labels = self._guidance_per_image(w_input, labels) * labels
        if self.label_embedding:
            x = torch.cat([pixel_norm(z), gain * pixel_norm(self.embed(labels))], dim=1)  # [N, 2 * latent]
        else:
            x = pixel_norm(torch.cat([z, gain * labels], dim=1))  # [N, latent + labels]
        x = self.dense(x).view(x.shape[0], -1, 4, 4)  # [N, C4, 4, 4]
        x = pixel_norm(lrelu(x))
        x = pixel_norm(lrelu(self.conv4(x)))  # [N, C4, 4, 4]
        if self.label_modulation and self.label_modulation_from <= 4:
            x = self.mod4(x, embedding_at.get("4", embedding), gain)
        previous = x
        for lv in range(2, level + 1):
            previous = x
            side = str(resolution_of(lv))
            x = self.blocks[side](x, embedding_at.get(side, embedding), gain)  # [N, C_res, res, res]
        out = self.to_rgb[str(resolution_of(level))](x)  # [N, 1, R, R]
        if level > 1 and alpha < 1.0:
            skip = upsample2(self.to_rgb[str(resolution_of(level - 1))](previous))  # [N, 1, R, R]
            out = torch.lerp(skip.to(out.dtype), out, alpha)  # CUDA autocast upsamples in fp32
        return out


def _no_finding_share(labels: torch.Tensor) -> torch.Tensor:
    """Each image's share of no finding, [N, 1]: 1 minus its largest label (labels [N, L] in 0..1)."""
    return 1.0 - labels.clamp(0.0, 1.0).amax(dim=1, keepdim=True)


class MinibatchStd(nn.Module):
    """Appends the mean standard deviation over groups of images as one extra feature map.

    Args:
        group_size: images per group (4 in PGGAN); the batch must be a multiple of it, or smaller.
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        assert n % g == 0, f"batch {n} is not a multiple of the minibatch-std group {g}"
        y = x.float().view(g, -1, c, h, w)  # [G, M, C, H, W]
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [M, C, H, W]
        y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # [M]
        y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)  # [N, 1, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Halves the resolution: two 3x3 convolutions, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv0(x))  # [N, Cin, H, W]
        x = lrelu(self.conv1(x))  # [N, Cout, H, W]
        return downsample2(x)  # [N, Cout, H/2, W/2]


class Discriminator(nn.Module):
    """Conditional PGGAN discriminator (critic) with an auxiliary label classifier and, optionally, a
    projection term.

    Returns the Wasserstein critic score [N] and one logit per label [N, num_labels]; the logits are
    trained with a per-label sigmoid cross-entropy on real images and on the generator's fakes (the
    ACGAN head; its weight in the loss may be 0). With `projection`, the score given labels `c` is
    the unconditional score plus <W c, h>, the inner product of a label embedding, linear in the
    continuous 0..1 label vector, with the critic's last features h (Miyato & Koyama 2018).

    Args:
        resolution:  final image side.
        num_labels:  size of the label vector.
        channels:    feature maps per resolution (mirrors the generator).
        mbstd_group: group size of the minibatch standard deviation.
        projection:  add the projection term (needs the labels in `forward`).

    `cond_gain` (1.0 outside training) scales the projection term, ramped in with the generator's.
    """

    def __init__(
        self,
        resolution: int,
        num_labels: int,
        channels: dict[int, int],
        mbstd_group: int = 4,
        projection: bool = False,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.num_labels = num_labels
        self.max_level = level_of(resolution)
        c4 = channels[4]
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for level in range(1, self.max_level + 1):
            res = resolution_of(level)
            self.from_rgb[str(res)] = EqualizedConv2d(1, channels[res], 1)
            if level > 1:
                self.blocks[str(res)] = DiscriminatorBlock(channels[res], channels[res // 2])
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv4 = EqualizedConv2d(c4 + 1, c4, 3)
        self.dense = EqualizedLinear(c4 * 16, c4)
        self.out = EqualizedLinear(c4, 1 + num_labels, gain=1.0)
        self.projection = projection
        self.cond_gain = 1.0
        if projection:  # a label's embedding is a column; zero at first, so D starts unconditional
            self.label_proj = nn.Parameter(torch.zeros(c4, num_labels))
            self.label_proj_scale = 1.0 / math.sqrt(num_labels)  # equalized learning rate

    def forward(
        self,
        images: torch.Tensor,
        level: int | None = None,
        alpha: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images: [N, 1, R, R], labels: [N, num_labels] -> (score [N], label_logits [N, num_labels])."""
        level = self.max_level if level is None else level
        res = resolution_of(level)
        assert images.shape[-1] == res, f"level {level} expects {res} px, got {images.shape[-1]}"
        x = lrelu(self.from_rgb[str(res)](images))  # [N, C_res, R, R]
        if level > 1:
            x = self.blocks[str(res)](x)  # [N, C_res/2, R/2, R/2]
            if alpha < 1.0:
                skip = lrelu(self.from_rgb[str(res // 2)](downsample2(images)))  # [N, C_res/2, R/2, R/2]
                x = torch.lerp(skip.to(x.dtype), x, alpha)
        for lv in range(level - 1, 1, -1):
            x = self.blocks[str(resolution_of(lv))](x)
        x = self.mbstd(x)  # [N, C4 + 1, 4, 4]
        x = lrelu(self.conv4(x))  # [N, C4, 4, 4]
        x = lrelu(self.dense(x.flatten(1)))  # [N, C4]
        out = self.out(x)  # [N, 1 + L]
        score = out[:, 0]
        if self.projection:
            assert labels is not None, "a projection discriminator needs the labels"
            embedding = F.linear(labels.to(x.dtype), self.label_proj * self.label_proj_scale)  # [N, C4]
            proj = (embedding * x).sum(dim=1)  # [N]
            score = score + self.cond_gain * proj.to(score.dtype)
        return score, out[:, 1:]
