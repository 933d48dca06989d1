"""credential.json: written atomically with mode 0600, read back, refused when damaged."""

from __future__ import annotations

import stat

import pytest

from agent.credential import (
    Credential,
    CredentialFileError,
    credential_path,
    load_credential,
    save_credential,
)


def test_round_trip_with_private_mode(tmp_path):
    state = tmp_path / "state"
    credential = Credential(server="https://cp", node="h1", credential="berth_node_secret")
    path = save_credential(state, credential)
    assert path == credential_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert load_credential(state) == credential
    assert [p.name for p in state.iterdir()] == ["credential.json"]  # no temporary file left


def test_rewrite_replaces_the_old_credential(tmp_path):
    save_credential(tmp_path, Credential("https://cp", "h1", "old"))
    save_credential(tmp_path, Credential("https://cp", "h1", "new"))
    assert load_credential(tmp_path).credential == "new"


def test_missing_file_means_not_enrolled(tmp_path):
    assert load_credential(tmp_path) is None


@pytest.mark.parametrize("content", ["{not json", '{"server": "x", "node": "h1"}', "[]"])
def test_damaged_file_is_refused_with_its_path(tmp_path, content):
    credential_path(tmp_path).write_text(content)
    with pytest.raises(CredentialFileError, match=r"credential\.json"):
        load_credential(tmp_path)


def test_secret_is_not_in_the_repr():
    assert "berth_node_secret" not in repr(Credential("https://cp", "h1", "berth_node_secret"))
