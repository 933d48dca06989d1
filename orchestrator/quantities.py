"""Resource quantities in the Kubernetes notation: CPU as cores or millicores
("250m", "0.5", "2"), memory as bytes with an optional SI or binary suffix
("64Mi", "1G", "1.5Gi", "128974848")."""

from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
# Suffixes people write by habit that Kubernetes rejects; the error tells them the right one.
_COMMON_MISTAKES = {"KB": "k", "MB": "M", "GB": "G", "TB": "T", "K": "k or Ki", "m": "M or Mi"}


class QuantityError(ValueError):
    """A quantity that cannot be read; the message says why and what is expected."""


def _decimal(number: str, original: str) -> Decimal:
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise QuantityError(f"{original!r} is not a quantity") from None
    if not value.is_finite():
        raise QuantityError(f"{original!r} is not a finite quantity")
    if value < 0:
        raise QuantityError(f"{original!r} must not be negative")
    return value


def parse_cpu(value: str | int | float) -> int:
    """CPU in millicores: "250m" -> 250, "1.5" -> 1500, 2 -> 2000."""
    text = str(value).strip()
    if isinstance(value, bool) or text == "":
        raise QuantityError("CPU must be a quantity such as '250m' or '0.5'")
    if text.endswith("m"):
        millis = _decimal(text[:-1], text)
    else:
        millis = _decimal(text, f"{text}") * 1000
    if millis != millis.to_integral_value():
        raise QuantityError(f"{text!r} is finer than one millicore (1m)")
    return int(millis)


def parse_memory(value: str | int | float) -> int:
    """Memory in bytes: "64Mi" -> 67108864, "1G" -> 10**9, "1e6" -> 1000000."""
    text = str(value).strip()
    if isinstance(value, bool) or text == "":
        raise QuantityError("memory must be a quantity such as '64Mi' or '1G'")
    for suffix, right in _COMMON_MISTAKES.items():
        if text.endswith(suffix) and not text.endswith(("Mi", "Ki")):
            if text[: -len(suffix)].replace(".", "", 1).isdigit():
                raise QuantityError(f"{text!r}: unknown suffix {suffix!r}; use {right}")
    for table in (_BINARY, _DECIMAL):
        for suffix, factor in table.items():
            if text.endswith(suffix):
                number = _decimal(text[: -len(suffix)], text) * factor
                break
        else:
            continue
        break
    else:
        number = _decimal(text, text)
    if number != number.to_integral_value():
        raise QuantityError(f"{text!r} is not a whole number of bytes")
    return int(number)


def format_cpu(millis: int | None) -> str | None:
    if millis is None:
        return None
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(num_bytes: int | None) -> str | None:
    if num_bytes is None:
        return None
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _BINARY[suffix]
        if num_bytes and num_bytes % factor == 0:
            return f"{num_bytes // factor}{suffix}"
    return str(num_bytes)
