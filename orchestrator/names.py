"""Object names: DNS-1123 labels, as Kubernetes requires, so they are safe as container
names, label values and host names."""

import re

from django.core.exceptions import ValidationError

DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dns_label_error(value: str) -> str | None:
    """The reason `value` is not a DNS-1123 label, or None when it is one."""
    if not isinstance(value, str) or value == "":
        return "must not be empty"
    if len(value) > DNS_LABEL_MAX:
        return f"must be at most {DNS_LABEL_MAX} characters (got {len(value)})"
    if not _DNS_LABEL.match(value):
        return (
            "must be a DNS-1123 label: lower case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'web-1')"
        )
    return None


def validate_dns_label(value: str) -> None:
    reason = dns_label_error(value)
    if reason:
        raise ValidationError(f"{value!r} {reason}.")
