"""The built-in demo dataset: 100 glyph classes x 600 images, generated in seconds.

A class is a character (Latin, Greek, digits, symbols) drawn from the fonts that matplotlib
ships, with a preferred ink colour. Every image draws its glyph in a random font face (sans,
serif, mono, bold, oblique), rotation, scale, shear and position, in a colour that mixes the
class's with a random one, on a random gradient background, under a larger half-transparent
distractor glyph of another class, with pixel noise. Shape identifies the class and colour hints
at it, as texture and colour statistics do in natural images; the test classes' shapes and
colours are never seen in meta-training. It is deterministic in its seed.
"""

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

GLYPHS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ" "abdefghijkmnpqrtuy" "23456789"
          "ΓΔΘΛΞΠΣΦΨΩ" "αβγδεζηθκλμξπστφχψω" "&@#$%?+=<>*§¶∞√∂∑∫≈")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}
RASTER = 48  # glyphs are rasterised once at this size, then warped to the image size


def class_name(glyph):
    return f"glyph-u{ord(glyph):04x}"


def glyph_masks():
    """(classes, fonts, RASTER, RASTER) coverage masks in [0, 1], each glyph centred on its bounding box."""
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    masks = np.zeros((len(GLYPHS), len(FONTS), RASTER, RASTER), dtype=np.float32)
    for f, font_file in enumerate(FONTS):
        font = ImageFont.truetype(str(font_dir / font_file), int(RASTER * 0.7))
        for g, glyph in enumerate(GLYPHS):
            left, top, right, bottom = font.getbbox(glyph)
            canvas = Image.new("L", (RASTER, RASTER))
            ImageDraw.Draw(canvas).text(((RASTER - (right - left)) / 2 - left, (RASTER - (bottom - top)) / 2 - top),
                                        glyph, fill=255, font=font)
            masks[g, f] = np.asarray(canvas, dtype=np.float32) / 255
    return torch.from_numpy(masks)


def random_affine(n, generator, scale_range):
    """(n, 2, 3) inverse warps for affine_grid: rotation +-25 deg, scale, shear +-0.2, shift +-0.15."""
    def uniform(low, high):
        return torch.rand(n, generator=generator) * (high - low) + low
    angle, scale = uniform(-25, 25) * math.pi / 180, uniform(*scale_range)
    shear, shift_x, shift_y = uniform(-0.2, 0.2), uniform(-0.15, 0.15), uniform(-0.15, 0.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin + shear, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)


def render(masks, glyph, font, ink, size, generator):
    """Images (n, 3, size, size) in [0, 1] of glyphs `glyph` drawn in fonts `font`, their ink
    colour 70% the class's `ink` (3 numbers in [0, 1]) and 30% random."""
    n = len(glyph)
    def warp(index_g, index_f, scale_range):
        grid = F.affine_grid(random_affine(n, generator, scale_range), (n, 1, size, size), align_corners=False)
        return F.grid_sample(masks[index_g, index_f].unsqueeze(1), grid, align_corners=False)
    shape = warp(glyph, font, (0.8, 1.25))
    offset = torch.randint(1, len(GLYPHS), (n,), generator=generator)
    distractor = warp((glyph + offset) % len(GLYPHS), torch.randint(len(FONTS), (n,), generator=generator),
                      (1.8, 2.6)) * 0.5

    light = (torch.rand(n, 1, 1, 1, generator=generator) < 0.5).float()
    def colour(bright):  # bright in {0, 1}: a colour in [0.55, 1] or [0, 0.45] per channel
        return torch.rand(n, 3, 1, 1, generator=generator) * 0.45 + 0.55 * bright
    angle = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ramp = ((xs * torch.cos(angle) + ys * torch.sin(angle)).unsqueeze(1) + 1) / 3
    background = colour(light) + (colour(light) - colour(light)) * ramp
    image = background * (1 - distractor) + colour(1 - light) * distractor
    class_ink = (0.7 * ink + 0.3 * torch.rand(n, 3, generator=generator)).view(n, 3, 1, 1) * 0.45 + 0.55 * (1 - light)
    image = image * (1 - shape) + class_ink * shape
    noise = torch.rand(n, 1, 1, 1, generator=generator) * 0.08
    return (image + noise * torch.randn(n, 3, size, size, generator=generator)).clamp(0, 1)


def generate(image_size, seed, images_per_class=600):
    """{split: (uint8 images (N, 3, S, S), int64 labels, class names)} with a 64/16/20 class split."""
    generator = torch.Generator().manual_seed(seed)
    masks = glyph_masks()
    order = torch.randperm(len(GLYPHS), generator=generator).tolist()
    inks = torch.rand(len(GLYPHS), 3, generator=generator)
    splits, start = {}, 0
    for split, n_classes in SPLIT_SIZES.items():
        classes = sorted(order[start:start + n_classes], key=lambda g: class_name(GLYPHS[g]))
        start += n_classes
        pixels = []
        for g in classes:
            glyph = torch.full((images_per_class,), g)
            font = torch.randint(len(FONTS), (images_per_class,), generator=generator)
            image = render(masks, glyph, font, inks[g], image_size, generator)
            pixels.append((image * 255).round().to(torch.uint8))
        labels = np.repeat(np.arange(len(classes)), images_per_class)
        splits[split] = (torch.cat(pixels).numpy(), labels, [class_name(GLYPHS[g]) for g in classes])
    return splits
