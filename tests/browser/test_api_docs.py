"""The API docs in a browser request nothing outside the site: a machine with no internet (the README's promise, and
this one) reads Redoc and Swagger UI whole."""

from urllib.parse import urlsplit

import pytest


@pytest.mark.parametrize(("path", "rendered"), [("/api/redoc/", "h1"), ("/api/docs/", ".swagger-ui .info")])
def test_the_docs_request_nothing_outside_the_site(page, live_server, path, rendered):
    urls = []
    page.on("request", lambda request: urls.append(request.url))

    page.goto(path)
    page.locator(rendered).filter(has_text="Idlefleet API").first.wait_for()  # the schema was fetched and drawn

    # Every request that goes over the network goes to the site (data: and blob: URLs are the page's own).
    hosts = {urlsplit(url).netloc for url in urls if urlsplit(url).scheme in ("http", "https")}
    assert hosts == {urlsplit(live_server.url).netloc}, urls
