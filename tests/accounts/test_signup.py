import pytest
from django.urls import reverse

from accounts.models import Role, User

pytestmark = pytest.mark.django_db


def signup_data(**overrides):
    data = {
        "username": "newbie",
        "email": "Newbie@Example.test",
        "password1": "a-long-unusual-passphrase",
        "password2": "a-long-unusual-passphrase",
        "role": Role.CUSTOMER,
    }
    data.update(overrides)
    return data


def test_signup_page_offers_both_roles(client):
    response = client.get(reverse("signup"))
    assert response.status_code == 200
    assert b'value="customer"' in response.content
    assert b'value="owner"' in response.content
    assert b'value="staff"' not in response.content


@pytest.mark.parametrize(("role", "dashboard"), [(Role.CUSTOMER, "/customer/"), (Role.OWNER, "/owner/")])
def test_signup_creates_the_role_and_lands_on_its_dashboard(client, role, dashboard):
    response = client.post(reverse("signup"), signup_data(role=role), follow=True)

    user = User.objects.get(username="newbie")
    assert user.role == role
    assert user.email == "newbie@example.test"
    assert not user.is_staff
    assert response.redirect_chain[-1][0] == dashboard
    assert response.context["user"] == user
    assert b"Welcome to Idlefleet, newbie." in response.content


def test_signup_cannot_choose_staff(client):
    response = client.post(reverse("signup"), signup_data(role=Role.STAFF))

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not User.objects.filter(username="newbie").exists()


def test_signup_rejects_a_taken_email_and_changes_nothing(client, alice):
    response = client.post(reverse("signup"), signup_data(email=alice.email.upper()))

    assert response.status_code == 400
    assert "An account with this email already exists" in response.content.decode()
    assert User.objects.count() == 1


def test_signup_rejects_mismatched_passwords(client):
    response = client.post(reverse("signup"), signup_data(password2="something-else-entirely"))

    assert response.status_code == 400
    assert "The two password fields didn" in response.content.decode()
    assert not User.objects.exists()
