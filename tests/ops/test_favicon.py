"""The site's icon: pages link the SVG, and /favicon.ico, which browsers ask for on their own, is a real icon."""

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_favicon_ico_is_an_icon_served_with_a_200(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/vnd.microsoft.icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file's header: reserved 0, type 1 (icon)
    assert response.content[22:26] == b"\x89PNG"  # its one image


def test_pages_link_the_svg_icon_and_it_is_served(client):
    page = client.get("/").content.decode()

    assert '<link rel="icon" href="/static/img/favicon.svg" type="image/svg+xml">' in page
    # A static file (the test client serves none): the one the link's address names.
    with open(finders.find("img/favicon.svg")) as icon:
        assert icon.read().startswith("<svg")
