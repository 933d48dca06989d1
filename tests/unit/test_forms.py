import pytest

from web.forms import FormInputError, deployment_payload, parse_env, parse_ports


def test_form_becomes_an_api_payload():
    payload, errors = deployment_payload(
        {
            "name": " web ",
            "image": "nginx:1.27",
            "replicas": "3",
            "command": "httpd -f -p '8 0'",
            "env": "A=1\n# comment\nB=x=y\n",
            "ports": "8080:80\n53/udp",
            "cpu": "250m",
            "memory": "",
        }
    )
    assert payload == {
        "name": "web",
        "image": "nginx:1.27",
        "replicas": 3,
        "command": ["httpd", "-f", "-p", "8 0"],
        "env": {"A": "1", "B": "x=y"},
        "ports": [{"container": 80, "host": 8080, "protocol": "tcp"}, {"container": 53, "protocol": "udp"}],
        "resources": {"cpu": "250m"},
        "node_selector": {},
    }
    assert errors == {}


@pytest.mark.parametrize(
    ("parser", "text", "field"),
    [
        (parse_env, "NOEQUALS", "env"),
        (parse_ports, "http:80", "ports"),
        (parse_ports, "80:", "ports"),
    ],
)
def test_bad_lines_name_the_field_and_line(parser, text, field):
    with pytest.raises(FormInputError) as error:
        parser(text)
    assert error.value.field == field and "line 1" in str(error.value)


def test_every_unreadable_field_is_reported_and_left_out():
    payload, errors = deployment_payload(
        {"name": "a", "image": "b", "replicas": "two", "command": "sh -c 'echo", "ports": "x", "env": "A=1"}
    )
    assert set(errors) == {"replicas", "command", "ports"}
    assert "split" in errors["command"][0]
    assert payload == {"name": "a", "image": "b", "env": {"A": "1"}, "node_selector": {}}


def test_placement_fields_from_the_form():
    payload, errors = deployment_payload(
        {"name": "a", "image": "b", "replicas": "1", "strategy": "binpack", "max_per_node": "2",
         "node_selector": "disk=ssd\nzone=a"}
    )  # fmt: skip
    assert errors == {}
    assert payload["strategy"] == "binpack" and payload["max_per_node"] == 2
    assert payload["node_selector"] == {"disk": "ssd", "zone": "a"}
    _, errors = deployment_payload({"name": "a", "image": "b", "node_selector": "ssd", "max_per_node": "x"})
    assert set(errors) == {"node_selector", "max_per_node"} and "key=value" in errors["node_selector"][0]


def test_health_and_update_fields_become_api_fields():
    payload, errors = deployment_payload(
        {
            "name": "web",
            "image": "nginx:1.27",
            "replicas": "2",
            "restart_policy": "on-failure",
            "readiness_path": "/healthz",
            "readiness_port": "8080",
            "update_type": "RollingUpdate",
            "max_surge": "1",
            "max_unavailable": "0%",
            "on_failure": "rollback",
        }
    )
    assert errors == {}
    assert payload["restart_policy"] == "on-failure"
    assert payload["readiness_probe"] == {"http_get": {"path": "/healthz", "port": 8080}, "period_seconds": 2}
    assert payload["update_strategy"] == {"type": "RollingUpdate", "max_surge": 1, "max_unavailable": "0%"}
    assert payload["on_failure"] == "rollback"


def test_a_readiness_port_that_is_not_a_number_is_reported():
    _, errors = deployment_payload({"name": "web", "image": "x", "readiness_port": "http"})
    assert errors == {"readiness_probe": ["port: must be a whole number"]}
