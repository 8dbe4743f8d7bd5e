"""The API's docs pages load nothing from outside the site: Redoc's script from the sidecar's static files, and no
web fonts (the README says the docs are served locally; a browser with no internet must still read them).
tests/browser/test_api_docs.py checks the requests a browser actually makes."""

import re

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/redoc/", "/api/docs/"])
def test_the_docs_page_references_no_address_outside_the_site(client, path):
    response = client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert re.findall(r"""(?:src|href)=["']?((?:https?:)?//[^"' >]+)""", html) == []
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html


def test_redoc_loads_its_script_from_the_sites_static_files(client):
    html = client.get("/api/redoc/").content.decode()

    script = re.search(r'<script src="([^"]+redoc\.standalone\.js)"', html).group(1)
    assert script.startswith("/static/")
    assert finders.find(script.removeprefix("/static/"))  # a static file of the site (the test client serves none)
