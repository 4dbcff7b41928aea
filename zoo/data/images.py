"""Reading images the way every domain does: any PIL mode, array, path or encoded bytes -> RGB PIL."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def load_image(x: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a numpy array (HxW, HxWx1/3/4; uint8 or float in [0, 1]),
    a path, or encoded bytes. Grayscale and RGBA are converted (RGBA composited on white), 16-bit and
    float images scaled to 8 bits; EXIF orientation (a file's, or an opened PIL image's) is applied, as a photo viewer
    shows it."""
    if isinstance(x, (str, Path)):
        path = Path(x).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} not found")
        if path.stat().st_size == 0:  # Pillow says "cannot identify image file": the file has nothing to identify
            raise ValueError(f"cannot read image {path}: the file is empty (0 bytes); an interrupted copy or download?")
        try:
            with Image.open(path) as im:
                im.load()
                return _to_rgb(_upright(im))
        except Image.DecompressionBombError as exc:
            raise ValueError(f"cannot read image {path}: {_too_large(exc)}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {path} ({exc}); the file is corrupt or not an image") from exc
    if isinstance(x, (bytes, bytearray)):
        if not x:
            raise ValueError("cannot decode image bytes: they are empty (0 bytes)")
        try:
            with Image.open(io.BytesIO(x)) as im:
                im.load()
                return _to_rgb(_upright(im))
        except Image.DecompressionBombError as exc:
            raise ValueError(f"cannot decode image bytes: {_too_large(exc)}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            # Pillow names the buffer by its repr (<_io.BytesIO object at 0x7f...>): said as "the bytes"
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the bytes", str(exc))
            raise ValueError(f"cannot decode image bytes ({reason}); the data is corrupt or not an image") from exc
    if isinstance(x, Image.Image):  # an opened file keeps its EXIF orientation tag: shown as a path would be
        return _to_rgb(_upright(x))
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        if torch.is_tensor(x):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds its values exactly
                x = x.float()
        arr = np.asarray(x)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating) or arr.size and (arr.min() < 0 or arr.max() > 1):
                raise ValueError(f"a non-uint8 image array must be float in [0, 1], got {arr.dtype}")
            if not np.isfinite(arr).all():  # NaN passes the range check above (every comparison is False)
                raise ValueError(f"a float image array holds {int((~np.isfinite(arr)).sum())} NaN value(s); pixels must lie in [0, 1]")
            arr = (arr * 255).round().astype(np.uint8)
        return _to_rgb(Image.fromarray(arr))
    raise TypeError(f"cannot read an image from {type(x).__name__}; pass a PIL image, numpy array, path or bytes")


def _too_large(exc: Exception) -> str:
    """What to do about Pillow's refusal of an image over twice ``Image.MAX_IMAGE_PIXELS`` (its own error named
    neither the file nor the way past it)."""
    return (f"{exc} Pillow refuses images of more than twice PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}); "
            "for a file you trust, raise it (PIL.Image.MAX_IMAGE_PIXELS = None) or downscale the image")


def _upright(im: Image.Image) -> Image.Image:
    """``im`` as a photo viewer shows it: turned per its EXIF orientation tag. EXIF that cannot be parsed (not TIFF
    data, a header cut short) has no orientation to apply: the pixels are read as they are, not refused as a corrupt
    image (the same for a path, bytes and an opened PIL image)."""
    try:
        turned = im.getexif().get(0x0112, 1) != 1
    except (SyntaxError, ValueError, struct.error):  # EXIF that is not TIFF data: no orientation to apply
        turned = False
    return ImageOps.exif_transpose(im) if turned else im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.width == 0 or im.height == 0:  # resized, it became a blank crop read as text
        raise ValueError(f"the image has no pixels ({im.width}x{im.height}); an empty crop has nothing to read")
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float: Pillow's convert would clip
        im = _to_8bit(im)
    if im.mode == "La":  # premultiplied grey + alpha: Pillow converts it only to LA
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """An ``L`` image from Pillow's ``I;16*`` (0..65535), ``I`` (0..255 or 0..65535) or ``F`` (0..1 or 0..255)."""
    arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"the {im.mode} image holds NaN or infinite values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        arr = arr * 255
    elif im.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
        arr = arr / 257
    elif lo < 0 or hi > 255:
        raise ValueError(f"cannot map the {im.mode} image's values {lo:g}..{hi:g} to 8 bits; expected 0..1, 0..255 or 0..65535")
    return Image.fromarray(arr.round().astype(np.uint8))


__all__ = ["load_image"]
