"""The paper's pictures from generated images, numpy only: tile grids (Figure 5's label transitions) and
difference maps (Figure 6: diseased minus healthy over the healthy image), and a labelled heatmap of a
correlation matrix for the evaluation's report.

Every function takes uint8 greyscale images in 0..255, as the backends and `to_uint8` give them, and
returns uint8 pixels (greyscale or RGB), so that the gateway (which loads no torch) and `thorax evaluate`
draw the same pictures. Padding is black.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BRIGHTER = (255.0, 40.0, 40.0)  # red: the diseased image is brighter than the healthy one here
DARKER = (40.0, 90.0, 255.0)  # blue: it is darker
MISSING = (160.0, 160.0, 160.0)  # grey: a heatmap cell whose value is nan


def tile_grid(tiles: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 [rows, cols, H, W] (or [rows, cols, H, W, 3]) -> one uint8 image [rows*(H+pad)+pad,
    cols*(W+pad)+pad] (plus the colour axis), with `pad` black pixels around and between the tiles."""
    assert tiles.ndim in (4, 5) and tiles.dtype == np.uint8, (tiles.shape, tiles.dtype)
    rows, cols, h, w = tiles.shape[:4]
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[4:]), np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = tiles[r, c]
    return canvas


def difference_overlay(healthy: np.ndarray, diseased: np.ndarray) -> np.ndarray:
    """uint8 [H, W] twice -> uint8 [H, W, 3]: the healthy image in grey, tinted red where the diseased one
    is brighter and blue where it is darker, with alpha |diseased - healthy| / max |diseased - healthy|.
    Where the two are equal the pixel stays the healthy grey; identical images give the healthy image."""
    assert healthy.shape == diseased.shape and healthy.ndim == 2, (healthy.shape, diseased.shape)
    assert healthy.dtype == np.uint8 and diseased.dtype == np.uint8, (healthy.dtype, diseased.dtype)
    diff = diseased.astype(np.float64) - healthy.astype(np.float64)  # [H, W] in -255..255
    scale = max(float(np.abs(diff).max()), 1e-6)
    alpha = (np.abs(diff) / scale)[..., None]  # [H, W, 1] in 0..1
    grey = np.repeat(healthy.astype(np.float64)[..., None], 3, axis=2)  # [H, W, 3]
    colour = np.where((diff > 0)[..., None], BRIGHTER, DARKER)  # [H, W, 3]
    overlay = (1.0 - alpha) * grey + alpha * colour
    return overlay.round().clip(0, 255).astype(np.uint8)


def difference_row(healthy: np.ndarray, diseased: np.ndarray, pad: int = 1) -> np.ndarray:
    """uint8 [H, W] twice -> uint8 [H+2*pad, 3*(W+2*pad), 3]: healthy | diseased | their overlay (see
    `difference_overlay`), each with `pad` black pixels on every side. Rows of several labels stack with
    `np.concatenate(rows)`."""
    overlay = difference_overlay(healthy, diseased)
    tiles = [np.repeat(healthy[..., None], 3, axis=2), np.repeat(diseased[..., None], 3, axis=2), overlay]
    return np.concatenate([np.pad(t, ((pad, pad), (pad, pad), (0, 0))) for t in tiles], axis=1)


def heatmap(matrix: np.ndarray, names: list[str], cell: int = 28) -> np.ndarray:
    """A square matrix [L, L] of values in -1..1 (a correlation) -> uint8 RGB [top + L*cell, left + L*cell, 3]
    on white: each cell blended from white (0) to red (+1, `BRIGHTER`) or blue (-1, `DARKER`), grey where
    nan; the names along the left and, written upwards, along the top; the value with 2 decimals in each
    cell when `cell` >= 24 leaves room for it. The cells fill the bottom-right L*cell x L*cell pixels, row
    i and column i starting i*cell pixels into that square."""
    matrix = np.asarray(matrix, dtype=np.float64)
    size = len(names)
    assert matrix.shape == (size, size), (matrix.shape, size)
    font = ImageFont.load_default()
    gap = 4  # pixels between a name and the cells
    name_width = max((font.getbbox(name)[2] for name in names), default=0)
    left = top = name_width + 2 * gap

    value = np.nan_to_num(matrix.clip(-1.0, 1.0), nan=0.0)[..., None]  # [L, L, 1]
    colour = np.where(value > 0, BRIGHTER, DARKER)  # [L, L, 3]
    rgb = (1.0 - np.abs(value)) * 255.0 + np.abs(value) * colour
    rgb[np.isnan(matrix)] = MISSING
    cells = rgb.round().astype(np.uint8).repeat(cell, axis=0).repeat(cell, axis=1)  # [L*cell, L*cell, 3]
    canvas = np.full((top + size * cell, left + size * cell, 3), 255, np.uint8)
    canvas[top:, left:] = cells
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)

    def centred_y(text: str, row_top: int) -> float:  # the y that centres `text` in a row `cell` high
        _, y0, _, y1 = font.getbbox(text)
        return row_top + (cell - (y1 - y0)) / 2 - y0

    # the top names are drawn as rows of a strip that is then turned a quarter anticlockwise: row i
    # becomes column i, and the start of each name the end nearest the cells
    strip = Image.new("RGB", (top, size * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for i, name in enumerate(names):
        y = centred_y(name, i * cell)
        draw.text((left - gap - font.getbbox(name)[2], top + y), name, fill="black", font=font)
        strip_draw.text((gap, y), name, fill="black", font=font)
    image.paste(strip.rotate(90, expand=True), (left, 0))

    if cell >= 24:
        for (r, c), v in np.ndenumerate(matrix):
            if np.isnan(v):
                continue
            text = f"{v:.2f}"
            x0, _, x1, _ = font.getbbox(text)
            x = left + c * cell + (cell - (x1 - x0)) / 2 - x0
            draw.text((x, centred_y(text, top + r * cell)), text, fill="white" if abs(v) >= 0.6 else "black",
                      font=font)  # fmt: skip
    return np.asarray(image, dtype=np.uint8)
