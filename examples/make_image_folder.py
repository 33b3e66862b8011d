"""Write a small image folder in the ImageFolder layout (OUT/<class>/<image>.jpg) from scikit-image's sample photos:
each class is one photo, each image a random crop of it. Used by README's "Data where you keep it" section.

    python examples/make_image_folder.py out/images [--per-class 75] [--size 40] [--seed 0]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to create (must not exist)")
    parser.add_argument("--per-class", type=int, default=75, help="images per class (default 75)")
    parser.add_argument("--size", type=int, default=40, help="side of the saved images in pixels (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out)
    for name in PHOTOS:
        photo = getattr(data, name)()
        folder = os.path.join(args.out, name)
        os.makedirs(folder)
        h, w = photo.shape[:2]
        for k in range(args.per_class):
            side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
            top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = Image.fromarray(photo[top:top + side, left:left + side]).convert("RGB")
            crop.resize((args.size, args.size), Image.BILINEAR).save(os.path.join(folder, f"{k:03d}.jpg"), quality=90)
    print(f"wrote {len(PHOTOS) * args.per_class} images in {len(PHOTOS)} class folders under {args.out}")


if __name__ == "__main__":
    main()
