"""Create the first admin user on first run; its password is printed once and kept in a
git-ignored file."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from webapp.core.files import write_private


class Command(BaseCommand):
    help = "Create the first admin user (username 'admin') when no superuser exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        users = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        if users.objects.filter(is_superuser=True).exists():
            where = f" (password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"Admin user exists{where}.")
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
        password_file.unlink(missing_ok=True)  # a stale one from an earlier database
        write_private(password_file, f"username: {username}\npassword: {password}\n")
        self.stdout.write(self.style.SUCCESS(
            f"Created admin user '{username}' with password: {password}\n"
            f"(shown once; also kept in {password_file})"
        ))
