import pytest
from django.urls import reverse

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

CUSTOMER_PAGE = "/customer/"
OWNER_PAGE = "/owner/"
STAFF_PAGE = "/staff/"


@pytest.mark.parametrize("url", [CUSTOMER_PAGE, OWNER_PAGE, STAFF_PAGE, "/dashboard/", "/account/"])
def test_anonymous_visitors_are_sent_to_log_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


def test_a_customer_cannot_open_owner_or_staff_pages(client, alice):
    client.force_login(alice)
    assert client.get(CUSTOMER_PAGE).status_code == 200
    owner_page = client.get(OWNER_PAGE)
    assert owner_page.status_code == 403
    assert "This page is for car owners." in owner_page.content.decode()
    assert client.get(STAFF_PAGE).status_code == 403
    assert client.get("/admin/").status_code == 302  # the admin sends non-staff to its own login


def test_an_owner_cannot_open_customer_or_staff_pages(client, olivia):
    client.force_login(olivia)
    assert client.get(OWNER_PAGE).status_code == 200
    customer_page = client.get(CUSTOMER_PAGE)
    assert customer_page.status_code == 403
    assert "This page is for customers." in customer_page.content.decode()
    assert client.get(STAFF_PAGE).status_code == 403


def test_staff_see_the_staff_dashboard_and_the_admin(client, staff):
    client.force_login(staff)
    assert client.get(STAFF_PAGE).status_code == 200
    admin = client.get("/admin/")
    assert admin.status_code == 200
    assert "Platform health" in admin.content.decode()


@pytest.mark.parametrize(
    ("fixture", "dashboard", "empty_state"),
    [
        ("alice", CUSTOMER_PAGE, "No bids yet."),
        ("olivia", OWNER_PAGE, "No vehicles yet."),
        ("staff", STAFF_PAGE, "Platform health"),
    ],
)
def test_logging_in_lands_on_the_role_dashboard(client, request, fixture, dashboard, empty_state):
    user = request.getfixturevalue(fixture)

    response = client.post(reverse("login"), {"username": user.username, "password": PASSWORD}, follow=True)

    assert response.redirect_chain[-1][0] == dashboard
    assert empty_state in response.content.decode()


def test_a_wrong_password_is_refused_with_a_message(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_logout_is_a_post_and_ends_the_session(client, alice):
    client.force_login(alice)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(CUSTOMER_PAGE).status_code == 302


def test_password_change(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "another-fine-passphrase",
            "new_password2": "another-fine-passphrase",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("another-fine-passphrase")


def test_pages_send_the_csrf_token_with_every_htmx_request(client, alice):
    client.force_login(alice)
    html = client.get(CUSTOMER_PAGE).content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in html
    assert "/static/django_htmx/htmx" in html  # served locally, no CDN
    assert "/static/vendor/pico/pico.min.css" in html
