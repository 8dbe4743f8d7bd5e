from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Role, User
from accounts.services import user_create
from ops.demo import DEMO_PASSWORD, DEMO_USERS


class Command(BaseCommand):
    help = "Create the demo accounts (safe to run again: existing accounts keep their data, passwords are reset)."

    @transaction.atomic
    def handle(self, *args, **options):
        created = 0
        for username, role, _label in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                user_create(
                    username=username,
                    email=f"{username}@demo.idlefleet.test",
                    password=DEMO_PASSWORD,
                    role=role,
                    is_superuser=role == Role.STAFF,
                )
                created += 1
            else:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
        self.stdout.write(f"demo accounts: {created} created, {len(DEMO_USERS) - created} already there")
