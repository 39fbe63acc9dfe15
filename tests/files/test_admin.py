"""Staff see users' files (metadata) in the admin."""

import pytest
from django.test import Client

from apps.accounts.models import User
from tests.support.files import make_file

pytestmark = [pytest.mark.django_db]


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
