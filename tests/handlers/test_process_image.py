"""process_image on real images of several formats, a corrupt one and a decompression bomb."""

import pytest
from PIL import Image

from apps.files.models import UserFile
from apps.files.services import file_open
from apps.handlers.context import TaskContext
from apps.handlers.registry import get_task_type
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver, result_of
from tests.support.files import make_file
from tests.support.images import bomb_png, corrupt_png, make_image, open_image

S = TaskStatus
pytestmark = [pytest.mark.django_db]

FORMATS = [
    ("PNG", "image/png", "photo.png"),
    ("JPEG", "image/jpeg", "photo.jpg"),
    ("GIF", "image/gif", "photo.gif"),
    ("WEBP", "image/webp", "photo.webp"),
    ("BMP", "image/bmp", "photo.bmp"),
    ("TIFF", "image/tiff", "photo.tiff"),
]


def output_of(task) -> tuple[UserFile, Image.Image]:
    output = UserFile.objects.get(id=result_of(task)["file"]["id"])
    with file_open(output) as handle:
        return output, open_image(handle.read())


def process(user, data: bytes, name: str = "photo.png", **ops):
    source = make_file(user, name, data)
    task = create(user, "process_image", {"path": str(source.id), **ops}, max_retries=3)
    deliver(task)
    return task


@pytest.mark.parametrize(("image_format", "mime", "name"), FORMATS)
def test_every_operation_on_each_format_gives_a_new_file_in_the_same_format(
    user, image_format, mime, name
):
    original = make_image(image_format)
    task = process(
        user,
        original,
        name,
        blur=1.5,
        sharpen=1,
        gamma=1.2,
        contrast=20,
        brightness=-10,
        saturation=30,
        invert=True,
    )
    assert task.status == S.SUCCEEDED, task.error
    output, image = output_of(task)
    assert image.format == image_format
    assert image.size == (40, 30)
    assert (output.owner_id, output.source_task_id) == (user.id, task.id)
    assert output.content_type == mime
    assert output.name == name.replace("photo.", "photo-processed.")
    assert result_of(task)["format"] == image_format
    assert result_of(task)["file"]["download_url"] == f"/api/files/{output.id}/download"
    assert set(result_of(task)["operations"]) == {
        "blur",
        "sharpen",
        "gamma",
        "contrast",
        "brightness",
        "saturation",
        "invert",
    }
    assert image.convert("RGB").tobytes() != open_image(original).convert("RGB").tobytes()


def test_invert_is_exact_on_a_lossless_format(user):
    original = open_image(make_image("PNG"))
    task = process(user, make_image("PNG"), invert=True)
    _, image = output_of(task)
    x, y = 7, 5
    r, g, b = original.getpixel((x, y))  # type: ignore[misc]
    assert image.getpixel((x, y)) == (255 - r, 255 - g, 255 - b)


def test_gamma_follows_the_power_law(user):
    gray = Image.new("L", (4, 4), 64)
    import io

    out = io.BytesIO()
    gray.save(out, format="PNG")
    task = process(user, out.getvalue(), gamma=2)
    _, image = output_of(task)
    assert image.getpixel((0, 0)) == round(255 * (64 / 255) ** 0.5)  # 128


def test_grayscale_gives_a_gray_image(user):
    task = process(user, make_image("PNG"), grayscale=True)
    _, image = output_of(task)
    assert image.mode == "L"


def test_transparency_is_kept(user):
    task = process(user, make_image("PNG", mode="RGBA"), brightness=50)
    _, image = output_of(task)
    assert image.mode == "RGBA"


def test_the_source_can_be_named_by_its_unique_name(user):
    make_file(user, "holiday.png", make_image("PNG"))
    task = create(user, "process_image", {"path": "holiday.png", "blur": 2})
    source = UserFile.objects.get(name="holiday.png")
    assert task.payload["path"] == str(source.id)
    deliver(task)
    assert result_of(task)["source"] == {"id": str(source.id), "name": "holiday.png"}


def test_a_corrupt_image_fails_at_once_with_a_clear_error(user):
    task = process(user, corrupt_png(), "broken.png", blur=1)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "broken.png is a corrupt or truncated image" in task.error


def test_something_that_is_not_an_image_fails_at_once(user):
    task = process(user, b"just some text\n", "notes.png", blur=1)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "notes.png is not an image format Pillow can read" in task.error


@pytest.mark.parametrize("image_format", ["PPM", "TGA", "PCX"])
def test_a_format_pillow_knows_but_is_not_let_to_read_fails_at_once(user, image_format):
    # Pillow reads dozens of formats (EPS through Ghostscript, where installed): only the common,
    # well-kept ones are opened.
    task = process(user, make_image(image_format), "picture.img", blur=1)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "picture.img is not an image format Pillow can read here (PNG, JPEG" in task.error


def test_a_decompression_bomb_is_refused(user):
    task = process(user, bomb_png(), "bomb.png", blur=1)
    assert task.status == S.FAILED
    assert task.attempts == 1
    assert "decompression bomb" in task.error
    assert not UserFile.objects.filter(source_task=task).exists()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(user, settings):
    settings.IMAGE_MAX_PIXELS = 1000
    task = process(user, make_image("PNG"), "big.png", blur=1)  # 40x30 = 1200 pixels
    assert task.status == S.FAILED
    assert "big.png is 40x30 = 1200 pixels, over the limit of 1000" in task.error


def test_running_again_stores_no_second_output(user):
    task = process(user, make_image("PNG"), blur=1)
    spec = get_task_type("process_image")
    assert spec is not None
    ctx = TaskContext(
        task_id=str(task.id),
        task_type=task.type,
        attempt=2,
        owner_id=user.id,
        report_progress=lambda percent, message: None,
        read_cancel_requested=lambda: False,
    )
    again = spec.run(ctx, dict(task.payload))
    assert again["file"]["id"] == result_of(task)["file"]["id"]
    assert UserFile.objects.filter(source_task=task).count() == 1
