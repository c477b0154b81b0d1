"""Render demo samples as one labelled PNG grid (Pillow, imported lazily: only the demo needs it)."""

from __future__ import annotations

import torch

DISPLAY_RANGE = 5.0  # latent values in [-5, 5] map to black..white; beyond is clipped ("burnt")
TILE_SCALE = 2
LABEL_WIDTH = 250
PADDING = 4
BACKGROUND = (32, 32, 32)
TEXT_COLOUR = (235, 235, 235)


def to_gray_image(sample: torch.Tensor):
    """One latent (C, H, W) as a grayscale PIL image of its channel mean, [-5, 5] -> [0, 255]."""
    from PIL import Image

    mean = sample.float().mean(0)
    pixels = ((mean / DISPLAY_RANGE + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    image = Image.fromarray(pixels.numpy(), mode="L")
    return image.resize((image.width * TILE_SCALE, image.height * TILE_SCALE)).convert("RGB")


def render_grid(results, path, per_row: int = 8) -> None:
    """Write a PNG with one labelled row of ``per_row`` samples per demo case."""
    from PIL import Image, ImageDraw

    tiles = [[to_gray_image(s) for s in r.samples[:per_row]] for r in results]
    tile_w, tile_h = tiles[0][0].size
    width = LABEL_WIDTH + per_row * (tile_w + PADDING)
    canvas = Image.new("RGB", (width, len(results) * (tile_h + PADDING) + PADDING), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row, (result, row_tiles) in enumerate(zip(results, tiles, strict=True)):
        top = PADDING + row * (tile_h + PADDING)
        text = f"{result.case.label}\nbrightness/mu {result.brightness_ratio:.2f}\nsaturation {result.saturation:.2f}"
        draw.multiline_text((PADDING, top + PADDING), text, fill=TEXT_COLOUR)
        for col, tile in enumerate(row_tiles):
            canvas.paste(tile, (LABEL_WIDTH + col * (tile_w + PADDING), top))
    canvas.save(path)
