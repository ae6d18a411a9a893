"""Small data sets built into fastbp (no download)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

#: Class names of :func:`four_pixel_images`, in label order.
FOUR_PIXEL_CLASSES = ("solid", "vertical", "diagonal", "horizontal")

# Sign patterns of a 2x2 image, pixels in the order top-left, top-right,
# bottom-left, bottom-right (the seeds' four-pixel camera).
_PATTERNS = np.array(
    [
        [1, 1, 1, 1],     # solid: all pixels alike
        [1, -1, 1, -1],   # vertical: left column against right column
        [1, -1, -1, 1],   # diagonal: one diagonal against the other
        [1, 1, -1, -1],   # horizontal: top row against bottom row
    ],
    dtype=np.float64,
)


def four_pixel_images(
    n_samples: int = 1000, noise: float = 0.15, seed: Optional[int] = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """The seeds' four-pixel images: solid, vertical, diagonal, horizontal.

    Each image is a class pattern of +/-1 pixels times a random overall sign
    (a "solid" image is all white or all black), each pixel's brightness
    scaled by U(0.5, 1), plus Gaussian noise; so no single pixel, nor any
    sum of pixels, tells the classes apart, yet a small MLP can.

    Parameters
    ----------
    n_samples : int
        Number of images.
    noise : float
        Standard deviation of the Gaussian pixel noise.
    seed : int or None
        Seed of the generator.

    Returns
    -------
    X : ndarray of shape (n_samples, 4), float64
        Pixel values, roughly in [-1, 1].
    y : ndarray of shape (n_samples,), int64
        Labels, indices into :data:`FOUR_PIXEL_CLASSES`.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(FOUR_PIXEL_CLASSES), size=n_samples)
    sign = rng.choice([-1.0, 1.0], size=(n_samples, 1))
    brightness = rng.uniform(0.5, 1.0, size=(n_samples, 4))
    X = _PATTERNS[y] * sign * brightness + rng.normal(0.0, noise, size=(n_samples, 4))
    return X, y.astype(np.int64)
