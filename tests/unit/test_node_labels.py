"""Label keys and values as Kubernetes checks them, and the node page's one-a-line notation."""

import pytest

from nodes.labels import format_taint, label_key_error, label_value_error
from web.forms import FormInputError
from web.node_forms import labels_text, parse_labels, parse_taints, taints_text


@pytest.mark.parametrize(
    "key",
    [
        "zone",
        "a",
        "Zone_1.x-y",
        "example.com/zone",
        "topology.kubernetes.io/zone",
        "a" * 63,
        f"{'b' * 253}/x",
    ],
)
def test_valid_label_keys(key):
    assert label_key_error(key) is None


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "must not be empty"),
        ("-zone", "starting and ending"),
        ("zone.", "starting and ending"),
        ("a b", "not a valid label key"),
        ("a" * 64, "at most 63 characters (got 64)"),
        ("/zone", "prefix before '/' must not be empty"),
        ("example.com/", "name after the prefix must not be empty"),
        ("Example.com/zone", "DNS subdomain"),
        ("exa_mple.com/zone", "DNS subdomain"),
        (f"{'b' * 254}/x", "DNS subdomain of at most 253"),
        ("a/b/c", "DNS subdomain"),
    ],
)
def test_invalid_label_keys_say_why(key, words):
    assert words in label_key_error(key)


@pytest.mark.parametrize("value", ["", "a", "v1.2_3-x", "A" * 63])
def test_valid_label_values(value):
    assert label_value_error(value) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [("v" * 64, "at most 63"), ("-a", "not a valid label value"), ("a b", "not a valid"), (3, "string")],
)
def test_invalid_label_values_say_why(value, words):
    assert words in label_value_error(value)


def test_labels_notation_round_trips():
    assert parse_labels("# comment\nzone = a\n\nempty=\nexample.com/x=1") == {
        "zone": "a",
        "empty": "",
        "example.com/x": "1",
    }
    assert parse_labels(labels_text({"b": "2", "a": ""})) == {"a": "", "b": "2"}


@pytest.mark.parametrize(
    ("text", "words"), [("zone", "line 1 ('zone') is not key=value"), ("=a", "not key=value")]
)
def test_labels_notation_errors_name_the_line(text, words):
    with pytest.raises(FormInputError) as caught:
        parse_labels(text)
    assert caught.value.field == "labels" and words in str(caught.value)


def test_taints_notation_round_trips():
    taints = [t for _, t in parse_taints("dedicated=gpu:NoSchedule\n\nmaintenance:NoExecute")]
    assert taints == [
        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
        {"key": "maintenance", "value": "", "effect": "NoExecute"},
    ]
    assert taints_text(taints) == "dedicated=gpu:NoSchedule\nmaintenance:NoExecute"
    assert format_taint({"key": "k", "effect": "PreferNoSchedule"}) == "k:PreferNoSchedule"
    assert parse_taints("x:NoSchedule")[0][0] == "line 1 (x:NoSchedule)"


@pytest.mark.parametrize("text", ["dedicated=gpu", ":NoSchedule", "=v:NoSchedule"])
def test_taints_notation_errors_name_the_line(text):
    with pytest.raises(FormInputError) as caught:
        parse_taints(text)
    assert caught.value.field == "taints" and "line 1" in str(caught.value)
