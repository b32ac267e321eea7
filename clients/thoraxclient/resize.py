"""Resizing greyscale radiographs with numpy alone (the SDK needs no imaging library): the area average
when shrinking, as the gateway does for lower resolutions, and bilinear interpolation when enlarging."""

from __future__ import annotations

import numpy as np


def resample_matrix(source: int, target: int) -> np.ndarray:
    """The [target, source] weights that map one image axis of `source` pixels onto `target` pixels.

    Shrinking: each target pixel is the mean of the source pixels it covers, partly covered ones
    weighted by the covered fraction (an exact block mean when `source` is a multiple of `target`).
    Enlarging: bilinear interpolation between pixel centres, edges held.
    """
    if target <= source:
        edges = np.arange(target + 1) * (source / target)  # target pixel edges in source pixels
        pixel = np.arange(source)[None, :]  # [1, source]
        start, end = np.maximum(edges[:-1, None], pixel), np.minimum(edges[1:, None], pixel + 1)
        covered = end - start  # [target, source]; negative where a pixel lies outside
        return (np.clip(covered, 0, None) / (source / target)).astype(np.float32)
    centres = (np.arange(target) + 0.5) * (source / target) - 0.5
    centres = np.clip(centres, 0, source - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, source - 1)
    fraction = (centres - low).astype(np.float32)
    weights = np.zeros((target, source), np.float32)
    weights[np.arange(target), low] += 1 - fraction
    weights[np.arange(target), high] += fraction
    return weights


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 [H, W] image as uint8 [size, size] (a non-square image is stretched to the square)."""
    if image.shape == (size, size):
        return image
    rows = resample_matrix(image.shape[0], size)  # [size, H]
    columns = resample_matrix(image.shape[1], size)  # [size, W]
    resized = rows @ image.astype(np.float32) @ columns.T  # [size, size]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
