"""File services: names, content types, and a task's outputs stored once."""

import pytest

from apps.core.exceptions import ApplicationError
from apps.files import selectors
from apps.files.models import UserFile
from apps.files.services import FileTooLarge, clean_name, file_create
from tests.support.files import make_file
from tests.tasks.factories import create_task

pytestmark = [pytest.mark.django_db]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\x.txt", "x.txt"),
        ("..", "file"),
        ("", "file"),
        ("tab\there\x00.txt", "tabhere.txt"),
        ("a" * 300 + ".txt", "a" * 251 + ".txt"),
    ],
)
def test_clean_name(given, expected):
    assert clean_name(given) == expected


def test_the_same_task_output_is_stored_once(user, media_root):
    task = create_task(user)
    first = file_create(
        owner_id=user.id, name="a.txt", content=b"1", source_task_id=task.id, source_key="out"
    )
    again = file_create(
        owner_id=user.id, name="a.txt", content=b"1", source_task_id=task.id, source_key="out"
    )
    assert again.id == first.id
    assert UserFile.objects.filter(source_task=task).count() == 1
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 1


def test_a_size_limit_stores_nothing(user, media_root):
    with pytest.raises(FileTooLarge):
        file_create(owner_id=user.id, name="a", content=b"12345", max_bytes=4)
    assert not media_root.exists() or not any(p.is_file() for p in media_root.rglob("*"))


def test_resolve_by_id_or_unambiguous_name_and_never_another_users(user, other_user):
    mine = make_file(user, "cat.png")
    theirs = make_file(other_user, "dog.png")
    assert selectors.file_resolve(owner_id=user.id, ref=str(mine.id)) == mine
    assert selectors.file_resolve(owner_id=user.id, ref="cat.png") == mine
    for ref in (str(theirs.id), "dog.png", "nothing.png"):
        with pytest.raises(ApplicationError) as raised:
            selectors.file_resolve(owner_id=user.id, ref=ref)
        assert raised.value.code == "file_not_found"
    make_file(user, "cat.png")
    with pytest.raises(ApplicationError) as raised:
        selectors.file_resolve(owner_id=user.id, ref="cat.png")
    assert raised.value.code == "ambiguous_file_name"
