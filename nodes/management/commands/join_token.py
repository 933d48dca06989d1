from django.core.management.base import BaseCommand

from nodes.services import do_create_join_token


class Command(BaseCommand):
    help = "Create a join token for enrolling a server's agent and print it (last line). Shown only once."

    def add_arguments(self, parser):
        parser.add_argument("--ttl", type=int, default=None, help="seconds until it expires (default 24 h)")
        parser.add_argument("--description", default="")

    def handle(self, *args, ttl, description, **options):
        token, clear = do_create_join_token(None, ttl, description)
        self.stderr.write(
            f"join token (expires {token.expires_at:%Y-%m-%d %H:%M} UTC; shown once). On a server run:\n"
            "  python -m agent --server <this server's URL> --join-token <token>"
        )
        self.stdout.write(clear)
