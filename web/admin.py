from django.contrib import admin

from web.models import TerminalSession


@admin.register(TerminalSession)
class TerminalSessionAdmin(admin.ModelAdmin):
    """The audit trail of web terminals: read-only, nobody edits history."""

    list_display = (
        "started_at",
        "username",
        "namespace",
        "replica",
        "node",
        "duration",
        "exit_code",
        "end_reason",
    )
    list_filter = ("namespace", "node")
    search_fields = ("username", "replica", "deployment")

    @admin.display(description="duration (s)")
    def duration(self, obj):
        return obj.duration_seconds

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
