"""STR image preprocessing without Lightning: what :meth:`STRModel.read` needs at inference
(:mod:`zoo.data.str` re-exports it)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from zoo.data.images import load_image


def to_tensor(img: Image.Image, size: tuple[int, int] = (32, 128)) -> torch.Tensor:
    """``[3, H, W]`` float in ``[-1, 1]``: bicubic resize to ``size`` (height, width), as PARSeq. ``img``: an RGB
    PIL image (used as it is), or anything else :func:`zoo.data.images.load_image` reads (grayscale, palette,
    16-bit, RGBA on white, an array), converted by it."""
    if not isinstance(img, Image.Image) or img.mode != "RGB" or 0 in img.size:  # load_image names an empty crop
        img = load_image(img)
    H, W = size
    if img.size != (W, H):
        img = img.resize((W, H), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1).contiguous()


__all__ = ["to_tensor"]
