"""Training-time augmentation as batched tensor work on the data's device: no loop over images, no host trip.

Two transforms, each one or two batched ops for a whole minibatch:

- `padded_crop`: zero-pad, crop back to the original size at a random offset, maybe mirror (the paper's
  CIFAR-10 transform, torchvision's ``RandomCrop(32, padding=4) + RandomHorizontalFlip()``): one gather.
- `random_resized_crop_boxes` + `resized_crops`: torchvision's ``RandomResizedCrop(size) +
  RandomHorizontalFlip()`` (the paper's Imagenette / Imagewoof transform): the crop boxes are drawn by
  torchvision's own rule, all images at once, and every crop is resampled to ``size x size`` with PIL's
  bilinear filter written as two batched matrix products.

Every random number comes from the ``generator`` argument, and each call draws a fixed count of them whatever the
images are, so a resumed trial that recreates the epoch's generator gets the same crops as an uninterrupted one.
The datasets (`rayrs.data`) say which transform each one trains with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["padded_crop", "random_resized_crop_boxes", "resized_crops"]

RRC_TRIES = 10  # torchvision's RandomResizedCrop.get_params tries 10 boxes before its centre-crop fallback


def padded_crop(images: torch.Tensor, *, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once on its device.

    Each image gets its own crop offset ``(dy, dx)``, uniform in ``0..2 * padding``, and, if `flip`, a fair coin
    for mirroring. Output pixel ``(y, x)`` of image b is padded pixel ``(y + dy_b, x' + dx_b)`` with ``x' = x``
    or ``W - 1 - x`` (mirrored): one gather does crop and flip together, no loop over images.

    Args:
        images: float ``(B, C, H, W)``.
        generator: the only source of randomness; must live on ``images.device``.
        padding: zero padding in pixels on each side; 0 disables cropping.
        flip: whether to mirror a random half of the images.

    Returns:
        ``(B, C, H, W)``, same dtype and device, in channels_last memory layout (what the gather yields,
        and what conv nets on GPUs prefer). With ``padding=0`` and ``flip=False``, `images` itself.
    """
    if images.ndim != 4:
        raise ValueError(f"padded_crop expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return images
    b, _, h, w = images.shape
    device = images.device
    p = padding
    padded = F.pad(images, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros outside
    dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=device)
    rows = dy + torch.arange(h, device=device)  # (B, H) source rows in `padded`
    cols = dx + torch.arange(w, device=device)  # (B, W) source columns
    if flip:
        mirrored = torch.randint(0, 2, (b, 1), generator=generator, device=device).bool()
        cols = torch.where(mirrored, cols.flip(1), cols)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: the result is (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_resized_crop_boxes(
    sizes: torch.Tensor,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """One crop box per image, by the rule of torchvision's ``RandomResizedCrop.get_params``, for all at once.

    For each image: up to 10 tries of an area ``U(scale) * H * W`` and an aspect ratio ``w / h = exp(U(log
    ratio))``, ``w = round(sqrt(area * aspect))`` and ``h = round(sqrt(area / aspect))``; the first try with
    ``0 < w <= W`` and ``0 < h <= H`` wins, placed uniformly among the ``(H - h + 1) x (W - w + 1)`` positions.
    If no try fits, the centre crop of the whole image with its aspect ratio clamped into `ratio`. Python's
    ``round`` and ``torch.round`` both round halves to even, so the boxes follow torchvision's rule exactly; the
    random stream differs (all tries are drawn up front: a fixed ``22 B`` float64 uniforms per call).

    Args:
        sizes: ``(B, 2)`` int64 ``(height, width)`` of each image, in the pixels the boxes are wanted in.
        generator: the only source of randomness, on ``sizes.device``.
        scale: bounds of the crop's area as a fraction of the image's.
        ratio: bounds of the crop's aspect ratio ``width / height``.

    Returns:
        ``(B, 4)`` int64 ``(top, left, height, width)``, every box inside its image.
    """
    device = sizes.device
    b = sizes.shape[0]
    height, width = sizes[:, 0].double(), sizes[:, 1].double()  # (B,)
    draws = torch.rand(b, RRC_TRIES, 2, generator=generator, device=device, dtype=torch.float64)
    area = (height * width)[:, None] * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])  # (B, tries)
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * draws[..., 1])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.byte().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    found = fits.any(dim=1)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]

    # torchvision's fallback: the whole image, its aspect ratio clamped into [min(ratio), max(ratio)].
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fallback_w = torch.where(wide, (height * max(ratio)).round(), width)
    fallback_h = torch.where(narrow, (width / min(ratio)).round(), height)
    h, w = torch.where(found, h, fallback_h), torch.where(found, w, fallback_w)

    position = torch.rand(b, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(found, (position[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (position[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([top, left, h, w], dim=1).long()


def _bilinear_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, reverse: torch.Tensor
) -> torch.Tensor:
    """PIL's bilinear resampling of the window ``[start, start + length)`` of each row to `out_size` samples.

    PIL (``Image.resize``, libImaging/Resample.c) gives output pixel k the centre ``c_k = start + (k + 0.5) *
    s`` in input pixels, ``s = length / out_size``, and weighs input pixel j by the triangle ``1 - |j + 0.5 -
    c_k| / max(s, 1)`` (widened when downscaling: that is its antialiasing), over the pixels of the window
    only (torchvision crops first, then resizes the cropped image), normalised to sum 1.

    Each output pixel has at most ``taps = ceil(2 max(s, 1)) + 1`` non-zero weights, with ``s`` at most
    ``in_size / out_size``: they are formed as ``(B, out_size, taps)`` and scattered into the dense matrix, so
    the work is one zero fill of it rather than a dozen passes over it.

    Args:
        start, length: ``(B,)`` float64 windows in input pixel coordinates (pixel j spans ``[j, j + 1)``).
        in_size: input pixels along this axis (the canvas side).
        out_size: output pixels.
        reverse: ``(B,)`` bool; where set, the output order is reversed (a mirror folded into the weights).

    Returns:
        ``(B, out_size, in_size)`` float32 weights; each row sums to 1.
    """
    device = start.device
    step = length / out_size  # input pixels per output pixel
    centre = start[:, None] + (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * step[:, None]
    centre = torch.where(reverse[:, None], centre.flip(1), centre)  # (B, out)
    half_width = step.clamp(min=1.0)[:, None, None]
    taps = math.ceil(2 * max(in_size / out_size, 1.0)) + 1  # a static bound: no host sync on the device's data
    first = (centre - half_width[..., 0] + 0.5).floor()  # PIL's xmin: the first pixel the triangle can reach
    pixel = first[..., None] + torch.arange(taps, device=device, dtype=torch.float64)  # (B, out, taps)
    weights = (1 - (pixel + 0.5 - centre[..., None]).abs() / half_width).clamp(min=0.0)
    inside = (pixel + 0.5 >= start[:, None, None]) & (pixel + 0.5 < (start + length)[:, None, None])
    weights = weights * inside  # only the crop's pixels, as PIL resizes the cropped image
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    dense = torch.zeros(start.shape[0], out_size, in_size, device=device)
    # Taps past the canvas have weight 0 (outside the window); clamping their index only keeps them addressable.
    return dense.scatter_add_(2, pixel.clamp(0, in_size - 1).long(), weights.float())


def resized_crops(
    pixels: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    *,
    transposed: torch.Tensor | None = None,
    mirror: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each image to its box and resample it to ``size x size`` with PIL's bilinear filter, batched.

    The output is what torchvision's ``resized_crop`` gives on a PIL image (``img.crop(box).resize(...)``),
    before PIL rounds to uint8: resampling is separable, so each image's crop is ``R X C^T`` with ``R`` the
    ``(size, rows)`` and ``C`` the ``(size, cols)`` filter weights of `_bilinear_weights` (zero outside the box),
    and the whole batch is two batched matrix products. On integer boxes it is within 1/255 of torchvision's
    PIL result (PIL rounds to uint8 after each of its two passes; tests/test_data.py checks the bound).
    Boxes may be fractional (a box mapped onto a stored copy of another size); pixels of the box then are those
    whose centres lie inside it.

    Args:
        pixels: ``(B, C, rows, cols)`` uint8 images (a canvas each); a box may only cover pixels of its image.
        boxes: ``(B, 4)`` ``(top, left, height, width)`` in pixels of the image's own orientation.
        size: output side.
        transposed: ``(B,)`` bool: image b is stored transposed in its canvas (its rows are the canvas's
            columns); its box and output are in the image's own orientation all the same.
        mirror: ``(B,)`` bool: flip image b's output left to right.

    Returns:
        ``(B, C, size, size)`` float32 in [0, 1], on the device of `pixels`.
    """
    b, c, rows, cols = pixels.shape
    device = pixels.device
    no = torch.zeros(b, dtype=torch.bool, device=device)
    transposed = no if transposed is None else transposed
    mirror = no if mirror is None else mirror
    top, left, height, width = boxes.double().unbind(dim=1)
    # In a transposed canvas the image's x axis runs down the rows: its box and its mirror swap axes.
    row_weights = _bilinear_weights(
        torch.where(transposed, left, top), torch.where(transposed, width, height), rows, size, mirror & transposed
    )
    col_weights = _bilinear_weights(
        torch.where(transposed, top, left), torch.where(transposed, height, width), cols, size, mirror & ~transposed
    )
    col_weights.mul_(1.0 / 255.0)  # uint8 0..255 to [0, 1], for free
    # Along the columns first (PIL's order; the cheaper one for landscape canvases), over every row of every
    # channel at once: (B, C * rows, cols) @ (B, cols, size).
    x = torch.bmm(pixels.reshape(b, c * rows, cols).float(), col_weights.transpose(1, 2)).view(b, c, rows, size)
    # Then along the rows, a bmm per channel on strided views (a broadcast matmul would copy the weights C times).
    x = torch.stack([torch.bmm(row_weights, x[:, channel]) for channel in range(c)], dim=1)  # (B, C, size, size)
    x = torch.where(transposed[:, None, None, None], x.mT, x)
    return x.clamp_(0.0, 1.0)  # a convex combination of [0, 1] values; the clamp only removes float rounding
