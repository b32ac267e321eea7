"""The OpenVINO backend (the one place that imports openvino): the model's ONNX graph compiled for the
CPU, in fp32 or in bf16 where the CPU has AVX512-BF16 or AMX.

bf16 is mixed: the low-resolution head of the generator (the dense layer, the 4x4 block and the blocks
up to a quarter of the image's side for a 64 px model, half of it from 128 px, and at least to
FP32_UP_TO px: 16 px for a 64 px model, 64 px for a 128 px one; `fp32_side`) runs in fp32 and only
the blocks above it in bf16. A GAN generator
amplifies what happens early: bf16 in the dense layer alone moves more pixels than bf16 in all the
high-resolution blocks together, while the head costs a small share of the FLOPs. Whole-graph bf16
left 4 % of the shipped 64 px model's pixels more than 1 grey level from fp32; this split keeps at
least 99 % within 1 (bench/inference_speed.py measures both, over 1,000 images). At 128 px a head to
16 px was not enough for `nih128/2` (98.9 % within 1, worst 14 grey levels); to 32 px: 99.8 %, worst 7,
but `nih128/5` (a spread per label) left one pixel 10-11 levels off at 32 px and 3 at 64 px (99.99 %
within 1), at 378 images/s on 2 threads against 464 at 32 px and onnxruntime fp32's 286.

Every call runs the graph on fixed chunks of CHUNK images (the last one padded): OpenVINO picks other
bf16 kernels for other batch sizes, and those round differently, so a fixed chunk is what keeps an
image the same whatever the gateway's batch size.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from service.backends import to_grey
from thorax.latents import latents_for

FP32_UP_TO = 16  # px: blocks at or below this resolution stay fp32 in the bf16 backend, at least
FP32_SHARE = 4  # ... and the blocks up to 1/FP32_SHARE of the image's side (64 px models)
FP32_SHARE_LARGE = 2  # ... 1/2 of it from LARGE px on: only the largest block runs in bf16
LARGE = 128


def fp32_side(resolution: int) -> int:
    """The side up to which the bf16 backend keeps a generator's blocks in fp32 (see the module's text)."""
    share = FP32_SHARE_LARGE if resolution >= LARGE else FP32_SHARE
    return max(FP32_UP_TO, resolution // share)


CHUNK = 16  # images per graph run


def _upsample_inputs(model: ov.Model) -> list[ov.Output]:
    """The tensor entering each upsampling (one per generator block above 4 px), in graph order."""
    return [
        op.input(0).get_source_output()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Interpolate"
    ]


def _parameters_reached(model_results: list, candidates: list) -> list:
    """The candidate Parameter nodes that the results depend on (the labels, where a generator feeds
    them into its later blocks too), in the candidates' order. Nodes are compared by their unique
    names: openvino hands out a new Python object for a node at every call."""
    reached, seen, stack = set(), set(), list(model_results)
    while stack:
        node = stack.pop()
        if (name := node.get_name()) in seen:
            continue
        seen.add(name)
        if node.get_type_name() == "Parameter":
            reached.add(name)
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return [c for c in candidates if c.get_name() in reached]


def split_at(onnx_path: Path, fp32_up_to: int) -> tuple[ov.Model, ov.Model | None]:
    """(head, tail): the graph up to the features at `fp32_up_to` px, and the rest fed by them (and by
    the labels where the later blocks take them too). The tail is None when the whole generator is at or
    below that resolution."""
    core = ov.Core()
    head = core.read_model(str(onnx_path))
    cuts = [
        i for i, t in enumerate(_upsample_inputs(head)) if t.get_partial_shape()[2].get_length() >= fp32_up_to
    ]
    if not cuts:
        return head, None
    cut = cuts[0]
    features = _upsample_inputs(head)[cut]
    head_model = ov.Model([features], head.get_parameters(), "head")
    tail = core.read_model(str(onnx_path))
    source = _upsample_inputs(tail)[cut]
    fed = ov.opset13.parameter(source.get_partial_shape(), source.get_element_type(), name="features")
    for target in list(source.get_target_inputs()):
        target.replace_source_output(fed.output(0))
    also = _parameters_reached(list(tail.get_results()), list(tail.get_parameters()))
    return head_model, ov.Model(tail.get_results(), [fed, *also], "tail")


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self, onnx_path: Path, latent_dim: int, threads: int, precision: str = "fp32",
        fp32_up_to: int = FP32_UP_TO, chunk: int = CHUNK,
    ) -> None:  # fmt: skip
        """`fp32_up_to`: px; with bf16, the blocks at or below it run in fp32 (0: none, bf16 throughout)."""
        self.latent_dim, self.chunk = latent_dim, chunk
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,  # leave the cores to the OS: the gateway shares them
        }  # fmt: skip
        head_precision = "f32"
        if precision == "bf16" and fp32_up_to > 0:
            head, tail = split_at(onnx_path, fp32_up_to)
        else:  # one graph: fp32, or (fp32_up_to 0, for comparison) bf16 throughout
            head, tail = core.read_model(str(onnx_path)), None
            head_precision = "bf16" if precision == "bf16" else "f32"
        for part in (head, tail):
            if part is not None:
                part.reshape({p.get_any_name(): [chunk, *p.get_partial_shape()[1:]] for p in part.inputs})
        self.head = core.compile_model(head, "CPU", {**config, "INFERENCE_PRECISION_HINT": head_precision})
        self.tail = tail and core.compile_model(tail, "CPU", {**config, "INFERENCE_PRECISION_HINT": "bf16"})
        self.precision = "bf16" if tail is not None or head_precision == "bf16" else "fp32"
        self.requests = (self.head.create_infer_request(), self.tail and self.tail.create_infer_request())
        # the graph inputs besides the features that the tail takes too (the labels, for a generator
        # with labels in every block)
        self.tail_inputs = [
            n for p in (tail.get_parameters() if tail else []) if (n := p.get_friendly_name()) != "features"
        ]
        self.lock = threading.Lock()  # an infer request runs one call at a time

    def generate(self, seed: int, indices: list[int], labels: np.ndarray) -> np.ndarray:
        z = latents_for(seed, indices, self.latent_dim)  # [N, latent_dim]
        labels = labels.astype(np.float32)
        n = len(indices)
        padded = -(-n // self.chunk) * self.chunk
        z = np.concatenate([z, np.zeros((padded - n, z.shape[1]), np.float32)])
        labels = np.concatenate([labels, np.zeros((padded - n, labels.shape[1]), np.float32)])
        head, tail = self.requests
        out = []
        with self.lock:
            for start in range(0, padded, self.chunk):
                part = slice(start, start + self.chunk)
                inputs = {"z": z[part], "labels": labels[part]}
                x = head.infer(inputs)[0]
                if tail is not None:
                    x = tail.infer({"features": x, **{n: inputs[n] for n in self.tail_inputs}})[0]
                out.append(to_grey(x))  # [chunk, H, W]; to_grey copies out of the request's buffer
        return np.concatenate(out)[:n]

    def close(self) -> None:
        self.requests = (None, None)
        self.head = self.tail = None
