"""Data where users keep it: image folders (the ImageFolder layout) and Hugging Face `datasets`, read lazily.

    data = op.ImageFolder("val/", preprocess="imagenet")            # val/<class>/<image>: sorted class -> label
    data = op.ImageFolder("val/", preprocess=op.Preprocess.preset("imagenet", resize=36, crop=32))
    op.evaluate(model, data); op.prune(model, "nn", ratio=0.3, calibration=data)
    op.evaluate(model, hf_dataset)                                   # columns by input name, labels in "label"

A data source answers `pairs(specs, batch_size)`: (feed {input name: array}, labels or None) per batch, decoded
when the batch is read, so memory does not grow with the folder. calibration.batches and evaluate take a source
wherever they take arrays; `as_source` turns what users pass (a folder path, an ImageFolder, a datasets Dataset)
into one, and leaves everything else (arrays, .npz paths, iterables of batches) to the existing readers.

Preprocessing (`Preprocess`), in this order: decode to RGB (or grayscale for a 1-channel input); `resize` (an int:
the shorter side to that size, aspect kept, as torchvision's Resize; (h, w): exactly that); center `crop`;
pixel values times `scale` (1/255: [0, 1]); minus `mean`, divided by `std` (per channel); `layout` NCHW or NHWC;
`dtype`. Unset fields come from the model's input: layout from where its channel axis (1 or 3) is, the dtype
from its element type, and without resize and crop the image is resized to the input's fixed height x width.
The "imagenet" preset is resize 256, crop 224, ImageNet's mean and std on [0, 1] pixels.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from onnxprune.errors import InvalidDataError, InvalidRequestError, MissingExtraError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "scale": 1 / 255},
    "none": {},
}

Size = int | tuple[int, int] | None


class InputSpec(Protocol):
    """A model input as calibration.input_specs describes it."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: np.dtype

    def describe(self) -> str: ...


def load_pil():
    """PIL.Image, or MissingExtraError when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError('reading images needs Pillow, which is not installed: pip install '
                                '"onnxprune[images]" (or pip install pillow)') from None
    return Image


# --------------------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one sample of a model input (see the module docstring); None: from the model."""

    resize: Size = None
    crop: Size = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1 / 255
    layout: str | None = None  # "NCHW" or "NHWC"
    dtype: str | None = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Preprocess":
        """A named preset ("imagenet", "none") with some fields replaced (None values are ignored)."""
        key = str(name).lower()
        if key not in PRESETS:
            raise InvalidRequestError(f"unknown preprocessing preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], **{k: v for k, v in overrides.items() if v is not None}})

    def for_input(self, spec: InputSpec) -> "Pipeline":
        """This preprocessing resolved against one 4-D model input."""
        if len(spec.dims) != 4:
            raise InvalidRequestError(f"image data feeds a 4-D input (N, C, H, W) or (N, H, W, C); the model's input "
                                      f"{spec.describe()} is not one")
        layout = (self.layout or _guess_layout(spec)).upper()
        if layout not in ("NCHW", "NHWC"):
            raise InvalidRequestError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        c_axis, h_axis = (1, 2) if layout == "NCHW" else (3, 1)
        channels = spec.dims[c_axis] if isinstance(spec.dims[c_axis], int) else 3
        if channels not in (1, 3):
            raise InvalidRequestError(f"input {spec.describe()} has {channels} channels on axis {c_axis} ({layout}); "
                                      "images give 1 (grayscale) or 3 (RGB): set the layout (--layout NHWC)")
        fixed = tuple(spec.dims[h_axis:h_axis + 2])
        fixed = fixed if all(isinstance(d, int) and d > 0 for d in fixed) else None
        dtype = _dtype(self.dtype) if self.dtype else spec.dtype
        resize, crop = _size(self.resize, "resize"), _size(self.crop, "crop")
        if resize is None and crop is None and fixed is not None:
            resize = fixed
        final = crop or (resize if isinstance(resize, tuple) else None)
        if fixed is not None and final is not None and final != fixed:
            raise InvalidRequestError(f"preprocessing gives {final[0]}x{final[1]} images but the model's input "
                                      f"{spec.describe()} takes {fixed[0]}x{fixed[1]}: set crop (--crop) and resize "
                                      "(--resize) to fit")
        mean = _per_channel(self.mean, channels, "mean", dtype)
        std = _per_channel(self.std, channels, "std", dtype)
        return Pipeline(spec.name, layout, channels, resize, crop, dtype, self.scale, mean, std)


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise InvalidRequestError(f"unknown dtype {name!r}; e.g. float32, float16, uint8") from None


def _guess_layout(spec: InputSpec) -> str:
    if spec.dims[1] in (1, 3):
        return "NCHW"
    if spec.dims[3] in (1, 3):
        return "NHWC"
    return "NCHW"


def _size(value: Size, what: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise InvalidRequestError(f"{what} must be a positive int or (height, width), not {value!r}")
    return int(value) if isinstance(value, int) and what == "resize" else (int(pair[0]), int(pair[1]))


def _per_channel(values: Sequence[float] | None, channels: int, what: str, dtype: np.dtype) -> np.ndarray | None:
    if values is None:
        return None
    if not np.issubdtype(dtype, np.floating):
        raise InvalidRequestError(f"{what} normalisation needs a float input, the images are fed as {dtype}")
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 3 and channels == 1:
        array = array.mean(keepdims=True)  # a grayscale model with an RGB preset
    if array.size not in (1, channels):
        raise InvalidRequestError(f"{what} has {array.size} values; the input has {channels} channels")
    if what == "std" and np.any(array == 0):
        raise InvalidRequestError("std must not contain 0")
    return array


@dataclass(frozen=True)
class Pipeline:
    """Preprocess resolved for one input: `load(path)` and `convert(image)` give one (C, H, W) / (H, W, C) sample."""

    input: str
    layout: str
    channels: int
    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    dtype: np.dtype
    scale: float
    mean: np.ndarray | None
    std: np.ndarray | None

    def load(self, path: str) -> np.ndarray:
        image_module = load_pil()
        try:
            with image_module.open(path) as image:
                image.load()
                return self.convert(image, path)
        except (OSError, SyntaxError, ValueError, image_module.DecompressionBombError) as exc:
            raise InvalidDataError(f"image '{path}' cannot be read ({type(exc).__name__}: {exc}); remove or "
                                   "replace the file") from None

    def convert(self, image: Any, where: str) -> np.ndarray:
        image_module = load_pil()
        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize is not None:
            image = image.resize(_resized(image.size, self.resize), image_module.BILINEAR)
        if self.crop is not None:
            image = _center_crop(image, self.crop, where)
        pixels = np.asarray(image)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if np.issubdtype(self.dtype, np.floating):
            values = pixels.astype(np.float64) * self.scale
            if self.mean is not None:
                values = values - self.mean
            if self.std is not None:
                values = values / self.std
        else:
            values = pixels
        values = values.astype(self.dtype)
        return np.ascontiguousarray(values.transpose(2, 0, 1)) if self.layout == "NCHW" else values

    def stack(self, samples: list[np.ndarray], names: list[str]) -> np.ndarray:
        """One batch; images of different sizes are an error naming the first odd one."""
        for sample, name in zip(samples, names):
            if sample.shape != samples[0].shape:
                raise InvalidDataError(f"image '{name}' gives a sample of shape {sample.shape}, '{names[0]}' one of "
                                       f"{samples[0].shape}; set crop (--crop) so every image has the same size")
        return np.stack(samples)


def _resized(size: tuple[int, int], target: int | tuple[int, int]) -> tuple[int, int]:
    """PIL (width, height) after resizing: an int sets the shorter side (aspect kept), (h, w) the exact size."""
    if isinstance(target, tuple):
        return target[1], target[0]
    w, h = size
    if w <= h:
        return target, max(1, int(target * h / w))
    return max(1, int(target * w / h)), target


def _center_crop(image: Any, crop: tuple[int, int], where: str) -> Any:
    w, h = image.size
    ch, cw = crop
    if ch > h or cw > w:
        raise InvalidDataError(f"image '{where}' is {h}x{w} after resizing, smaller than the {ch}x{cw} crop; resize "
                               "it larger (--resize)")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def _image_input(specs: list[InputSpec], name: str | None, where: str) -> InputSpec:
    if name is not None:
        for spec in specs:
            if spec.name == name:
                return spec
        raise InvalidRequestError(f"{where}: the model has no input {name!r}; its inputs are "
                                  f"{[s.describe() for s in specs]}")
    if len(specs) != 1:
        raise InvalidRequestError(f"{where} feeds one input but the model has {[s.describe() for s in specs]}; "
                                  "name it with input=...")
    return specs[0]


def _as_preprocess(preprocess: Preprocess | str | None) -> Preprocess:
    if preprocess is None:
        return Preprocess()
    if isinstance(preprocess, str):
        return Preprocess.preset(preprocess)
    if not isinstance(preprocess, Preprocess):
        raise InvalidRequestError(f"preprocess must be a Preprocess or a preset name {sorted(PRESETS)}, not "
                                  f"{type(preprocess).__name__}")
    return preprocess


# --------------------------------------------------------------------------- image folders

class ImageFolder:
    """Images in class subfolders (`root/<class>/**/<image>`); labels are the class indices in sorted name order.

    classes: the class names in label order when the folder holds only some of them (e.g. a validation subset);
    each must have its folder. input: the model input fed (default: the only one). The listing is made here;
    images are decoded batch by batch when iterated.
    """

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess | str | None = None, *,
                 classes: Sequence[str] | None = None, input: str | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = os.fspath(root)
        self.preprocess = _as_preprocess(preprocess)
        self.input = input
        self.extensions = tuple(e.lower() for e in extensions)
        if not os.path.isdir(self.root):
            raise InvalidDataError(f"image folder '{self.root}' does not exist or is not a folder")
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            stray = [e.name for e in os.scandir(self.root) if e.is_file()][:3]
            raise InvalidDataError(f"image folder '{self.root}' has no class folders" + (
                f" (files such as {stray} sit directly in it)" if stray else "") + ": put each class's images in a "
                "subfolder named after the class (root/<class>/<image>)")
        self.classes = list(classes) if classes is not None else found
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(self.root, name)
            if not os.path.isdir(folder):
                raise InvalidDataError(f"class folder '{folder}' is missing (class {label} of {len(self.classes)}); "
                                       "create it or leave the class out of classes=")
            files = self._images(folder)
            if not files:
                raise InvalidDataError(f"class folder '{folder}' holds no images ({', '.join(self.extensions)}); "
                                       "add images or remove the folder")
            self.samples.extend((path, label) for path in files)

    def _images(self, folder: str) -> list[str]:
        paths = []
        for parent, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths.extend(os.path.join(parent, f) for f in sorted(files)
                         if f.lower().endswith(self.extensions) and not f.startswith("."))
        return paths

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self.classes)} classes, {len(self.samples)} images)"

    def batch_count(self, batch_size: int) -> int:
        return math.ceil(len(self.samples) / batch_size)

    def pairs(self, specs: list[InputSpec], batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """({input: images}, labels) per batch of `batch_size` images, decoded when the batch is read."""
        spec = _image_input(specs, self.input, f"image folder '{self.root}'")
        _check_only_input(specs, spec, f"image folder '{self.root}'")
        pipeline = self.preprocess.for_input(spec)
        for start in range(0, len(self.samples), batch_size):
            chunk = self.samples[start:start + batch_size]
            names = [path for path, _ in chunk]
            images = pipeline.stack([pipeline.load(path) for path in names], names)
            yield {spec.name: images}, np.array([label for _, label in chunk], dtype=np.int64)


def _check_only_input(specs: list[InputSpec], spec: InputSpec, where: str) -> None:
    others = [s.describe() for s in specs if s.name != spec.name]
    if others:
        raise InvalidRequestError(f"{where} feeds input '{spec.name}' only; the model also needs {others}")


# --------------------------------------------------------------------------- Hugging Face datasets

class HFDataset:
    """A Hugging Face `datasets` Dataset (or IterableDataset) as model inputs and labels.

    A column named like a model input feeds it (a single-input model also takes an "image", "img" or
    "pixel_values" column); image columns (PIL images) go through `preprocess`, other columns are cast to the
    input's dtype. Labels come from `label_column` ("label", or "labels"; None when there is no such column).
    """

    def __init__(self, dataset: Any, preprocess: Preprocess | str | None = None, *,
                 label_column: str | None = None) -> None:
        if not is_hf_dataset(dataset):
            raise InvalidRequestError(f"HFDataset wraps a datasets.Dataset, not {type(dataset).__name__}")
        self.dataset = dataset
        self.preprocess = _as_preprocess(preprocess)
        columns = list(dataset.column_names or [])
        if label_column is not None and label_column not in columns:
            raise InvalidDataError(f"the dataset has no label column {label_column!r}; its columns are {columns}")
        self.label_column = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
        self.columns = columns

    def __len__(self) -> int:
        return len(self.dataset)

    def batch_count(self, batch_size: int) -> int | None:
        try:
            return math.ceil(len(self.dataset) / batch_size)
        except TypeError:
            return None

    def _column_for(self, spec: InputSpec, single: bool) -> str:
        if spec.name in self.columns:
            return spec.name
        fallback = next((c for c in IMAGE_COLUMNS if c in self.columns), None) if single else None
        if fallback is None:
            raise InvalidDataError(f"the dataset has no column for the model's input {spec.describe()}; its columns "
                                   f"are {self.columns} (name a column after the input, e.g. "
                                   f"dataset.rename_column('image', '{spec.name}'))")
        return fallback

    def pairs(self, specs: list[InputSpec], batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
        columns = {spec.name: self._column_for(spec, len(specs) == 1) for spec in specs}
        pipelines: dict[str, Pipeline] = {}
        start = 0
        for batch in self.dataset.iter(batch_size=batch_size):
            feed = {}
            for spec in specs:
                values = batch[columns[spec.name]]
                where = f"dataset rows {start}..{start + len(values) - 1}, column '{columns[spec.name]}'"
                if len(values) and _is_image(values[0]):
                    if spec.name not in pipelines:
                        pipelines[spec.name] = self.preprocess.for_input(spec)
                    pipeline = pipelines[spec.name]
                    feed[spec.name] = pipeline.stack([pipeline.convert(v, f"{where} row {start + i}")
                                                      for i, v in enumerate(values)],
                                                     [f"row {start + i}" for i in range(len(values))])
                else:
                    feed[spec.name] = _numeric(values, spec, where)
            labels = None if self.label_column is None else np.asarray(batch[self.label_column])
            start += len(next(iter(batch.values()))) if batch else 0
            yield feed, labels


def _is_image(value: Any) -> bool:
    return hasattr(value, "convert") and hasattr(value, "size") and hasattr(value, "mode")


def _numeric(values: Any, spec: InputSpec, where: str) -> np.ndarray:
    try:
        array = np.asarray(values)
        return array.astype(spec.dtype) if array.dtype.kind in "biuf" else array
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"{where}: cannot be read as an array for input {spec.describe()}: {exc}") from None


def is_hf_dataset(data: Any) -> bool:
    """A datasets.Dataset / IterableDataset (checked without importing `datasets`)."""
    module = type(data).__module__ or ""
    return module.split(".")[0] == "datasets" and hasattr(data, "column_names") and hasattr(data, "iter")


# --------------------------------------------------------------------------- dispatch

def as_source(data: Any) -> ImageFolder | HFDataset | None:
    """The data source `data` names (a folder path, an ImageFolder, a datasets Dataset), or None for the other
    forms (arrays, dicts, .npz/.npy paths, iterables of batches) the callers read themselves."""
    if isinstance(data, (ImageFolder, HFDataset)):
        return data
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        return ImageFolder(data)
    if is_hf_dataset(data):
        return HFDataset(data)
    if type(data).__name__ in ("DatasetDict", "IterableDatasetDict") and isinstance(data, Mapping):
        raise InvalidRequestError(f"a DatasetDict holds several splits {sorted(data)}; pass one, e.g. "
                                  "dataset['validation']")
    return None


def preprocess_spec(preset: str | None, **fields: Any) -> Preprocess:
    """A Preprocess from a preset name (None: no preset) and explicit fields (None: not given)."""
    base = Preprocess.preset(preset) if preset else Preprocess()
    given = {k: v for k, v in fields.items() if v is not None}
    return replace(base, **given)
