"""Node labels and taints as Kubernetes writes them, so what people know from there works.

A label key is an optional DNS subdomain prefix and '/' and a name (`zone`,
`topology.example.com/zone`); the name and the value are at most 63 characters of
letters, digits, '-', '_' and '.', starting and ending with a letter or digit (the value
may be empty). A taint is a label-like key, an optional value and an effect. These are
pure functions: the API, the dashboard and the scheduler's spec validation share them.
"""

import re

NAME_MAX = 63
PREFIX_MAX = 253
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_RULE = "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"

NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE = "NoSchedule", "PreferNoSchedule", "NoExecute"
TAINT_EFFECTS = (NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE)


def label_key_error(key) -> str | None:
    """Why `key` is not a label key, or None when it is one."""
    if not isinstance(key, str) or key == "":
        return "a label key must not be empty"
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"{key!r}: the prefix before '/' must not be empty"
        if len(prefix) > PREFIX_MAX or not _PREFIX.match(prefix):
            return (
                f"{key!r}: the prefix {prefix!r} must be a DNS subdomain of at most {PREFIX_MAX} "
                "characters (lower case letters, digits, '-' and '.', e.g. 'example.com')"
            )
    if name == "":
        return f"{key!r}: the name after the prefix must not be empty"
    if len(name) > NAME_MAX:
        return f"{key!r}: the name must be at most {NAME_MAX} characters (got {len(name)})"
    if not _NAME.match(name):
        return (
            f"{key!r} is not a valid label key: the name must be {_NAME_RULE} "
            "(e.g. 'zone' or 'example.com/zone')"
        )
    return None


def label_value_error(value) -> str | None:
    """Why `value` is not a label value, or None when it is one (empty is allowed)."""
    if not isinstance(value, str):
        return "a label value must be a string"
    if len(value) > NAME_MAX:
        return f"{value[:20]!r}…: a label value must be at most {NAME_MAX} characters (got {len(value)})"
    if value and not _NAME.match(value):
        return f"{value!r} is not a valid label value: {_NAME_RULE}, or empty"
    return None


def format_taint(taint: dict) -> str:
    """`key=value:Effect`, or `key:Effect` without a value (kubectl's notation)."""
    value = taint.get("value") or ""
    return f"{taint['key']}{'=' + value if value else ''}:{taint['effect']}"


def taint_identity(taint: dict) -> tuple[str, str]:
    """A node has at most one taint per key and effect (as in Kubernetes)."""
    return taint["key"], taint["effect"]
