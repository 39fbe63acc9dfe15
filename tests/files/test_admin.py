"""Staff see users' files (metadata) in the admin."""

import pytest
from django.test import Client

from apps.accounts.models import User
from tests.support.files import make_file

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff_client() -> Client:
    admin = User.objects.create_superuser(email="root@example.com", password="x-admin-pass-1")
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    return client


def test_staff_see_files_and_their_owners(user):
    make_file(user, "quarterly.pdf", b"%PDF-1.4")
    admin = User.objects.create_superuser(email="root@example.com", password="x-admin-pass-1")
    client = Client()
    client.force_login(admin)
    listing = client.get("/admin/files/userfile/")
    assert listing.status_code == 200
    assert b"quarterly.pdf" in listing.content
    assert b"alice@example.com" in listing.content
    assert client.get("/admin/files/userfile/add/").status_code == 403


@pytest.mark.parametrize("query", ["content_type=%00", "content_type=text/plain%00", "q=%00"])
def test_a_nul_character_in_the_query_string_is_400_not_500(user, staff_client, query):
    """Django's own filter on content_type passed the NUL to PostgreSQL: a 500."""
    make_file(user, "notes.txt", b"hello")
    response = staff_client.get(f"/admin/files/userfile/?{query}")
    assert response.status_code == 400, response.status_code
    assert staff_client.get("/admin/files/userfile/?content_type=text/plain").status_code == 200


def test_a_delete_action_on_ids_that_are_no_file_ids_deletes_nothing(user, staff_client):
    stored = make_file(user, "notes.txt", b"hello")
    response = staff_client.post(
        "/admin/files/userfile/",
        {"action": "delete_selected", "_selected_action": ["not-a-uuid"], "index": 0},
    )
    assert response.status_code in (200, 302), response.status_code
    assert type(stored).objects.filter(id=stored.id).exists()
