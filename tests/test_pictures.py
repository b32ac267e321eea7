"""thorax.pictures on known arrays: the tile grid's layout and the difference map's colours."""

from __future__ import annotations

import numpy as np

from thorax.pictures import BRIGHTER, DARKER, MISSING, difference_overlay, difference_row, heatmap, tile_grid


def test_tile_grid_places_tiles_with_black_padding() -> None:
    tiles = np.arange(1, 7, dtype=np.uint8).reshape(2, 3, 1, 1).repeat(4, axis=2).repeat(5, axis=3)
    grid = tile_grid(tiles, pad=2)  # 2 rows x 3 cols of 4x5 tiles
    assert grid.shape == (2 * 6 + 2, 3 * 7 + 2) and grid.dtype == np.uint8
    assert (grid[2:6, 2:7] == 1).all() and (grid[8:12, 16:21] == 6).all()
    assert grid.sum() == sum(v * 20 for v in range(1, 7))  # the rest is black
    rgb = tile_grid(np.stack([tiles] * 3, axis=-1), pad=1)
    assert rgb.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and (rgb[1:5, 1:6] == 1).all()


def test_the_overlay_is_the_healthy_grey_where_nothing_changes() -> None:
    healthy = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    overlay = difference_overlay(healthy, healthy.copy())
    assert overlay.shape == (8, 8, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay, np.repeat(healthy[..., None], 3, axis=2))


def test_the_overlay_is_red_where_brighter_and_blue_where_darker() -> None:
    healthy = np.full((4, 6), 100, np.uint8)
    diseased = healthy.copy()
    diseased[0, 0] = 200  # the largest change: brighter, full alpha
    diseased[3, 5] = 0  # as large the other way: darker, full alpha
    diseased[1, 2] = 150  # half as large: half alpha
    overlay = difference_overlay(healthy, diseased)
    assert tuple(overlay[0, 0]) == BRIGHTER and tuple(overlay[3, 5]) == DARKER
    expected_half = np.round(0.5 * 100 + 0.5 * np.asarray(BRIGHTER)).astype(np.uint8)
    np.testing.assert_array_equal(overlay[1, 2], expected_half)
    unchanged = np.ones((4, 6), bool)
    unchanged[0, 0] = unchanged[3, 5] = unchanged[1, 2] = False
    assert (overlay[unchanged] == 100).all()  # grey: equal channels, the healthy value


def test_the_difference_row_is_healthy_diseased_overlay_each_padded() -> None:
    healthy = np.full((3, 4), 50, np.uint8)
    diseased = np.full((3, 4), 90, np.uint8)
    row = difference_row(healthy, diseased)
    assert row.shape == (5, 3 * 6, 3) and row.dtype == np.uint8
    assert (row[1:4, 1:5] == 50).all() and (row[1:4, 7:11] == 90).all()
    assert (row[1:4, 13:17] == np.asarray(BRIGHTER, np.uint8)).all()  # a uniform change: full alpha
    border = np.ones((5, 18), bool)
    for left in (1, 7, 13):
        border[1:4, left : left + 4] = False
    assert (row[border] == 0).all()


def test_the_heatmap_is_red_for_plus_one_blue_for_minus_one_white_for_zero() -> None:
    matrix = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, np.nan], [0.0, np.nan, 1.0]])
    names = ["Effusion", "Cardiomegaly", "Pleural_Thickening"]
    for cell in (16, 28):  # without and with the values written in the cells
        image = heatmap(matrix, names, cell=cell)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        top, left = image.shape[0] - 3 * cell, image.shape[1] - 3 * cell  # the cells fill the bottom right
        assert top > 0 and left > 0 and top == left  # room for the names, as long on both sides
        assert (image[:top] < 128).any() and (image[:, :left] < 128).any()  # names written on top and left
        # a pixel near the corner of cells +1, -1, 0 and nan, clear of the value written in the cell
        red, blue, white, grey = (
            tuple(int(v) for v in image[top + r * cell + 2, left + c * cell + 2])
            for r, c in ((0, 0), (0, 1), (0, 2), (1, 2))
        )
        assert red == BRIGHTER and red[0] > 200 and red[2] < 80
        assert blue == DARKER and blue[2] > 200 and blue[0] < 80
        assert white == (255, 255, 255) and grey == MISSING
    plain, written = heatmap(matrix, names, cell=16), heatmap(matrix, names, cell=28)
    assert (plain[-16:, -16:] == BRIGHTER).all()  # no value written in a 16-pixel cell
    assert not (written[-28:, -28:] == BRIGHTER).all(axis=-1).all()  # "1.00" written in a 28-pixel cell
