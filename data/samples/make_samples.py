"""Regenerate the bundled sample images from scikit-image's ``data`` module.

Needs scikit-image only while running this script (it is not a dependency of the project):
``pip install scikit-image && python data/samples/make_samples.py``. Each image is read with
Pillow straight from the file shipped in ``skimage/data`` (or returned by ``skimage.data``),
converted to RGB, downscaled with Lanczos so that its longer side is 256 px (aspect kept, sizes
rounded to the nearest pixel) and written as an optimised 8-bit PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 256
# output name -> skimage.data function name
SOURCES = {
    "astronaut": "astronaut",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "retina": "retina",
}


def resize_longer_side(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Lanczos-downscale ``image`` so that its longer side is ``max_side`` pixels."""
    width, height = image.size
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


OUT_DIR = Path(__file__).resolve().parent


def main(out_dir: Path = OUT_DIR) -> None:
    """Write every sample PNG into ``out_dir``."""
    import skimage.data

    for name, func in SOURCES.items():
        array = np.asarray(getattr(skimage.data, func)())
        image = Image.fromarray(array).convert("RGB")
        small = resize_longer_side(image)
        small.save(out_dir / f"{name}.png", optimize=True)
        print(name, array.shape, "->", small.size)


if __name__ == "__main__":
    main()
