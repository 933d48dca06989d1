"""The node page's forms: what a person types, turned into the nodes API's shape, so the
API serializer validates both the same way. One entry a line; blank lines and lines
starting with '#' are skipped."""

from nodes.labels import format_taint
from web.forms import FormInputError


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number as the person sees it, stripped line) for the lines that say something."""
    return [
        (number, line.strip())
        for number, line in enumerate((text or "").splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def parse_labels(text: str) -> dict[str, str]:
    """Lines `key=value` (the value may be empty: `key=`)."""
    labels: dict[str, str] = {}
    for number, line in _lines(text):
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise FormInputError("labels", f"line {number} ({line!r}) is not key=value, e.g. zone=eu-1")
        if key in labels:
            raise FormInputError("labels", f"line {number}: the key {key!r} is given twice")
        labels[key] = value
    return labels


def parse_taints(text: str) -> list[tuple[str, dict]]:
    """Lines `key=value:Effect` or `key:Effect` (kubectl's notation), each with the line it
    came from so the API's per-taint errors can point at it."""
    taints = []
    for number, line in _lines(text):
        spec, sep, effect = line.rpartition(":")
        key, _, value = spec.partition("=")
        if not sep or not key.strip():
            raise FormInputError(
                "taints",
                f"line {number} ({line!r}) is not key=value:Effect or key:Effect, "
                "e.g. dedicated=gpu:NoSchedule",
            )
        taints.append(
            (
                f"line {number} ({line})",
                {"key": key.strip(), "value": value.strip(), "effect": effect.strip()},
            )
        )
    return taints


def labels_text(labels: dict) -> str:
    return "\n".join(f"{key}={value}" for key, value in sorted(labels.items()))


def taints_text(taints: list[dict]) -> str:
    return "\n".join(format_taint(taint) for taint in taints)
