from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from web.services import do_create_api_token


class Command(BaseCommand):
    help = "Create an API token for a user and print it (last line). It is shown only this once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for, e.g. 'ci'")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}; create one with 'manage.py createsuperuser'")
        _, clear = do_create_api_token(user, name)
        self.stderr.write(
            f"API token for {username} (shown once; send it as 'Authorization: Bearer <token>'):"
        )
        self.stdout.write(clear)
