"""`process_image` (seed 002): filters and adjustments on one of the owner's images, with Pillow.

The result is a new file of the owner, in the source's format, linked from the task's result.
Operations run in the seed's order: blur, sharpen, gamma, contrast, brightness, saturation,
grayscale, invert. An animated image is processed on its first frame.
"""

import io
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError
from rest_framework import serializers

from apps.files.services import file_summary
from taskflow.sdk import (
    FileRefField,
    NumberField,
    PermanentError,
    StrictBooleanField,
    TaskContext,
    TaskQueue,
    handler,
)

OPERATIONS = (
    "blur",
    "sharpen",
    "gamma",
    "contrast",
    "brightness",
    "saturation",
    "grayscale",
    "invert",
)
PERCENTAGES = frozenset({"contrast", "brightness", "saturation"})  # 0 means "no change"
JPEG_QUALITY = 90
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
# The formats Pillow is let to read. Not every format it knows: some hand the file to another
# program (EPS to Ghostscript, where installed) or are rarely decoded and little hardened.
READ_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


class ProcessImagePayload(serializers.Serializer):
    """`path` names one of your images; give at least one operation."""

    path = FileRefField(help_text="The image: a file id from /api/files (or its unique name).")
    blur = NumberField(
        required=False, positive=True, max_value=100, help_text="Gaussian blur radius, > 0."
    )
    sharpen = NumberField(
        required=False, positive=True, max_value=100, help_text="Unsharp mask radius, > 0."
    )
    gamma = NumberField(
        required=False,
        positive=True,
        max_value=10,
        help_text="Gamma correction, > 0 (< 1 darkens, > 1 lightens).",
    )
    contrast = NumberField(required=False, min_value=-100, max_value=100, help_text="Percent.")
    brightness = NumberField(required=False, min_value=-100, max_value=100, help_text="Percent.")
    saturation = NumberField(required=False, min_value=-100, max_value=100, help_text="Percent.")
    grayscale = StrictBooleanField(required=False, default=False)
    invert = StrictBooleanField(required=False, default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not requested_operations(attrs):
            raise serializers.ValidationError(
                "Give at least one operation: blur, sharpen or gamma (> 0); contrast, brightness "
                "or saturation (non-zero, -100..100); grayscale or invert (true)."
            )
        return attrs


def requested_operations(payload: dict[str, Any]) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for name in OPERATIONS:
        value = payload.get(name)
        if value is None or value is False or (name in PERCENTAGES and value == 0):
            continue
        ops[name] = value
    return ops


def _gamma_table(gamma: float) -> list[int]:
    return [round(255 * (i / 255) ** (1 / gamma)) for i in range(256)]


def apply_operations(image: Image.Image, ops: dict[str, Any]) -> Image.Image:
    """The operations on an image of any mode; returns L, LA, RGB or RGBA."""
    image = ImageOps.exif_transpose(image) or image
    alpha = None
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
        image = image.convert("RGB")
    elif image.mode not in {"RGB", "L"}:
        image = image.convert("L" if image.mode in {"1", "I", "I;16", "F"} else "RGB")

    if "blur" in ops:
        image = image.filter(ImageFilter.GaussianBlur(radius=ops["blur"]))
    if "sharpen" in ops:
        mask = ImageFilter.UnsharpMask(radius=ops["sharpen"], percent=100, threshold=0)
        image = image.filter(mask)
    if "gamma" in ops:
        image = image.point(_gamma_table(ops["gamma"]) * len(image.getbands()))
    if "contrast" in ops:
        image = ImageEnhance.Contrast(image).enhance(1 + ops["contrast"] / 100)
    if "brightness" in ops:
        image = ImageEnhance.Brightness(image).enhance(1 + ops["brightness"] / 100)
    if "saturation" in ops:
        image = ImageEnhance.Color(image).enhance(1 + ops["saturation"] / 100)
    if ops.get("grayscale"):
        image = image.convert("L")
    if ops.get("invert"):
        image = ImageOps.invert(image)

    if alpha is not None:
        image.putalpha(alpha)
    return image


def encode(image: Image.Image, image_format: str) -> bytes:
    """`image` in `image_format`, converting its mode if the format cannot hold it."""
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    try:
        image.save(out, format=image_format, **options)
    except (OSError, KeyError, ValueError):
        fallback = "RGBA" if image.mode in {"RGBA", "LA"} and image_format != "JPEG" else "RGB"
        out = io.BytesIO()
        try:
            image.convert(fallback).save(out, format=image_format, **options)
        except (OSError, KeyError, ValueError) as exc:
            raise PermanentError(f"Pillow cannot write {image_format} images: {exc}") from exc
    return out.getvalue()


def load_image(data: bytes, name: str) -> tuple[Image.Image, str]:
    """The first frame, decoded; PermanentError for what is not a (safe) image."""
    limit = settings.IMAGE_MAX_PIXELS
    try:
        image = Image.open(io.BytesIO(data), formats=READ_FORMATS)
        image_format = image.format or ""
        width, height = image.size
        if width * height > limit:
            raise PermanentError(
                f"{name} is {width}x{height} = {width * height} pixels, over the limit of {limit} "
                "(IMAGE_MAX_PIXELS): refused before decoding (decompression bomb guard)."
            )
        image.load()
    except Image.DecompressionBombError as exc:
        raise PermanentError(f"{name} is refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise PermanentError(
            f"{name} is not an image format Pillow can read here ({', '.join(READ_FORMATS)})."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PermanentError(f"{name} is a corrupt or truncated image: {exc}") from exc
    return image, image_format


def output_name(source_name: str, image_format: str) -> str:
    path = PurePosixPath(source_name)
    suffix = path.suffix or EXTENSIONS.get(image_format, f".{image_format.lower()}")
    return f"{path.stem or 'image'}-processed{suffix}"


@handler(
    "process_image",
    payload=ProcessImagePayload,
    queue=TaskQueue.CPU,
    time_limit_seconds=300,
    retry_on=(),
    description="Applies blur, sharpen, gamma, contrast, brightness, saturation, grayscale or "
    "invert to one of your images; the result is a new file in the same format.",
)
def process_image(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    source = ctx.file(payload["path"])
    ops = requested_operations(payload)
    with ctx.open_file(str(source.id)) as handle:
        data = handle.read()
    ctx.progress(10, "decoding")
    image, image_format = load_image(data, source.name)
    frames = getattr(image, "n_frames", 1)
    ctx.raise_if_cancelled()
    ctx.progress(30, "processing")
    processed = apply_operations(image, ops)
    ctx.raise_if_cancelled()
    ctx.progress(80, "encoding")
    encoded = encode(processed, image_format)
    saved = ctx.save_file(
        output_name(source.name, image_format),
        encoded,
        Image.MIME.get(image_format, source.content_type),
        key="output",
    )
    return {
        "file": file_summary(saved),
        "source": {"id": str(source.id), "name": source.name},
        "format": image_format,
        "width": processed.width,
        "height": processed.height,
        "operations": ops,
        "frames": frames,
        "note": "only the first frame was processed" if frames > 1 else "",
    }
