"""Settings: flags win over environment variables, and bad values are named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_DOCKER_HOST, DEFAULT_STATE_DIR, ConfigError, load_config, parse_labels

SERVER = ["--server", "https://berth.example.com"]


def test_flags():
    config = load_config(
        [
            *SERVER,
            "--join-token",
            "berth_join_x",
            "--name",
            "h1",
            "--docker-host",
            "unix:///tmp/d.sock",
            "--state-dir",
            "/tmp/berth-state",
            "--labels",
            "zone=a, disk=ssd",
        ],
        environ={},
    )
    assert config.server == "https://berth.example.com"
    assert config.join_token == "berth_join_x"
    assert config.name == "h1"
    assert config.docker_host == "unix:///tmp/d.sock"
    assert config.state_dir == Path("/tmp/berth-state")
    assert config.labels == {"zone": "a", "disk": "ssd"}


def test_environment_fallbacks_and_defaults():
    environ = {
        "BERTH_SERVER": "http://10.0.0.1:8000/",
        "BERTH_JOIN_TOKEN": "berth_join_y",
        "BERTH_NODE_NAME": "node-2",
        "DOCKER_HOST": "tcp://127.0.0.1:2375",
        "BERTH_STATE_DIR": "/srv/berth",
        "BERTH_LABELS": "zone=b",
    }
    config = load_config([], environ=environ)
    assert config.server == "http://10.0.0.1:8000"  # trailing slash dropped
    assert (config.join_token, config.name, config.docker_host) == (
        "berth_join_y",
        "node-2",
        "tcp://127.0.0.1:2375",
    )
    assert config.state_dir == Path("/srv/berth")
    assert config.labels == {"zone": "b"}

    bare = load_config(SERVER, environ={}, hostname="Web-01.Example.COM")
    assert bare.name == "web-01"  # the host name, lower-cased, without its domain
    assert bare.join_token is None
    assert bare.docker_host == DEFAULT_DOCKER_HOST
    assert bare.state_dir == Path(DEFAULT_STATE_DIR)
    assert bare.labels == {}


def test_flag_wins_over_environment():
    config = load_config([*SERVER, "--name", "from-flag"], environ={"BERTH_NODE_NAME": "from-env"})
    assert config.name == "from-flag"


def test_urls_for_the_session_and_enrollment():
    assert load_config(SERVER, environ={}).session_url == "wss://berth.example.com/ws/agent/"
    plain = load_config(["--server", "http://cp:8000/berth"], environ={})
    assert plain.session_url == "ws://cp:8000/berth/ws/agent/"
    assert plain.enroll_url == "http://cp:8000/berth/api/v1/agents/enroll"


def test_join_token_is_not_in_the_repr():
    config = load_config([*SERVER, "--join-token", "berth_join_secret"], environ={})
    assert "berth_join_secret" not in repr(config)


@pytest.mark.parametrize(
    ("argv", "environ", "names"),
    [
        ([], {}, ["--server", "BERTH_SERVER", "required"]),
        (["--server", "berth.example.com"], {}, ["--server", "http://"]),
        ([], {"BERTH_SERVER": "ftp://x"}, ["--server (from BERTH_SERVER)"]),
        ([*SERVER, "--name", "Bad_Name"], {}, ["--name", "'Bad_Name'"]),
        (SERVER, {"BERTH_NODE_NAME": "-x"}, ["--name (from BERTH_NODE_NAME)"]),
        ([*SERVER, "--labels", "zone"], {}, ["--labels", "'zone'", "key=value"]),
        ([*SERVER, "--labels", "zone=a,zone=b"], {}, ["--labels", "twice"]),
        ([*SERVER, "--labels", "bad key=a"], {}, ["--labels", "label key"]),
        ([*SERVER, "--labels", "zone=a b"], {}, ["--labels", "value of 'zone'"]),
        (SERVER, {"BERTH_LABELS": "=a"}, ["--labels (from BERTH_LABELS)"]),
        ([*SERVER, "--docker-host", "/var/run/docker.sock"], {}, ["--docker-host", "unix://"]),
        ([*SERVER, "--log-level", "loud"], {}, ["--log-level", "DEBUG"]),
    ],
)
def test_bad_settings_name_the_flag(argv, environ, names):
    with pytest.raises(ConfigError) as caught:
        load_config(argv, environ=environ, hostname="h1")
    for name in names:
        assert name in str(caught.value)


def test_host_name_that_is_not_a_dns_label_says_how_to_fix_it():
    with pytest.raises(ConfigError, match="--name or BERTH_NODE_NAME"):
        load_config(SERVER, environ={}, hostname="my_box")


def test_state_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="--state-dir"):
        load_config([*SERVER, "--state-dir", str(tmp_path / "f")], environ={})


def test_unknown_flag_exits_with_usage_naming_it(capsys):
    with pytest.raises(SystemExit) as caught:
        load_config([*SERVER, "--nmae", "h1"], environ={})
    assert caught.value.code == 2
    assert "--nmae" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("zone=a", {"zone": "a"}),
        (" zone = a , tier=web ,", {"zone": "a", "tier": "web"}),
        ("topology.kubernetes.io/zone=eu-1", {"topology.kubernetes.io/zone": "eu-1"}),
        ("gpu=", {"gpu": ""}),
    ],
)
def test_parse_labels(text, labels):
    assert parse_labels(text) == labels
