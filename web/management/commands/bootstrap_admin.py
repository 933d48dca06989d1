from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the superuser 'admin' with the password in --password-file, if no such user exists."

    def add_arguments(self, parser):
        parser.add_argument("--password-file", required=True, type=Path)
        parser.add_argument("--username", default="admin")

    def handle(self, *args, password_file: Path, username: str, **options):
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"user {username} exists; left as it is")
            return
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the password file {password_file}: {exc}") from None
        if len(password) < 12:
            raise CommandError(f"the password in {password_file} is shorter than 12 characters")
        User.objects.create_superuser(username=username, password=password, email="")
        self.stdout.write(f"created superuser {username}")
