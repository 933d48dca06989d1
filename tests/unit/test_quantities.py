import pytest

from orchestrator.quantities import QuantityError, format_cpu, format_memory, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("250m", 250),
        ("1", 1000),
        ("1.5", 1500),
        ("0.1", 100),
        (2, 2000),
        ("0", 0),
        ("100m", 100),
        ("2.250", 2250),
    ],
)
def test_cpu_quantities(text, millis):
    assert parse_cpu(text) == millis


@pytest.mark.parametrize("text", ["lots", "", "-1", "-250m", "0.0005", "1.5m", "nan", "inf", "1e400x", "m"])
def test_bad_cpu_quantities_say_why(text):
    with pytest.raises(QuantityError) as error:
        parse_cpu(text)
    assert str(error.value)


@pytest.mark.parametrize(
    ("text", "num_bytes"),
    [
        ("64Mi", 64 * 2**20),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("128974848", 128974848),
        ("1e6", 10**6),
        ("100k", 100_000),
        ("2Ki", 2048),
        ("1Ti", 2**40),
    ],
)
def test_memory_quantities(text, num_bytes):
    assert parse_memory(text) == num_bytes


@pytest.mark.parametrize(("text", "hint"), [("64MB", "M"), ("1GB", "G"), ("64m", "Mi"), ("10K", "Ki")])
def test_common_memory_mistakes_name_the_right_suffix(text, hint):
    with pytest.raises(QuantityError) as error:
        parse_memory(text)
    assert hint in str(error.value)


@pytest.mark.parametrize("text", ["lots", "-1Mi", "1.5", "Mi", "1 Gi x"])
def test_bad_memory_quantities(text):
    with pytest.raises(QuantityError):
        parse_memory(text)


def test_formatting_round_trips():
    for text in ["250m", "2", "64Mi", "1Gi", "1000"]:
        value = parse_cpu(text) if text in ("250m", "2") else parse_memory(text)
        formatted = format_cpu(value) if text in ("250m", "2") else format_memory(value)
        assert formatted == text
