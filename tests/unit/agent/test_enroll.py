"""Enrollment over HTTP against a small local server, and when the agent decides to enroll."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.config import load_config
from agent.credential import Credential, load_credential, save_credential
from agent.enroll import Enroller, EnrollmentError, EnrollmentRefused, EnrollmentRejected, enroll


class EnrollServer:
    """Answers POST /api/v1/agents/enroll as the protocol says; records the requests."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answer = (201, {"node": "h1", "credential": "berth_node_1"})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "type": self.headers["Content-Type"]})
                status, payload = outer.answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with EnrollServer() as running:
        yield running


def test_enroll_posts_the_join_token_and_returns_the_credential(server):
    credential = enroll(
        server.url, "berth_join_x", "h1", {"zone": "a"}, url=f"{server.url}/api/v1/agents/enroll"
    )
    assert credential == Credential(server=server.url, node="h1", credential="berth_node_1")
    assert server.requests == [
        {
            "path": "/api/v1/agents/enroll",
            "body": {"join_token": "berth_join_x", "name": "h1", "labels": {"zone": "a"}},
            "type": "application/json",
        }
    ]


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        ((401, {"detail": "join token expired"}), EnrollmentRefused, "join token expired"),
        ((400, {"name": ["not a DNS label"]}), EnrollmentRejected, "not a DNS label"),
        ((503, {"detail": "down"}), EnrollmentError, "HTTP 503"),
        ((201, {"oops": True}), EnrollmentError, "not {node, credential}"),
    ],
)
def test_enroll_errors(server, answer, error, text):
    server.answer = answer
    with pytest.raises(error, match=text) as caught:
        enroll(server.url, "berth_join_secret", "h1", {}, url=f"{server.url}/api/v1/agents/enroll")
    assert "berth_join_secret" not in str(caught.value)


def test_unreachable_server_is_a_retryable_error():
    with pytest.raises(EnrollmentError, match="cannot reach"):
        enroll("http://127.0.0.1:1", "t", "h1", {}, url="http://127.0.0.1:1/api/v1/agents/enroll")


def test_enroller_uses_the_stored_credential_or_enrolls(server, tmp_path):
    config = load_config(
        [
            "--server",
            server.url,
            "--name",
            "h1",
            "--join-token",
            "berth_join_x",
            "--state-dir",
            str(tmp_path),
        ],
        environ={},
    )
    enroller = Enroller(config)
    first = asyncio.run(enroller.current())
    assert first.credential == "berth_node_1" and load_credential(tmp_path) == first
    server.answer = (201, {"node": "h1", "credential": "berth_node_2"})
    assert asyncio.run(enroller.current()) == first  # stored: no second enrollment
    assert len(server.requests) == 1
    assert asyncio.run(enroller.rotate()).credential == "berth_node_2"
    assert load_credential(tmp_path).credential == "berth_node_2"


def test_credential_of_another_node_is_replaced_when_a_join_token_is_given(server, tmp_path):
    save_credential(tmp_path, Credential(server.url, "old-name", "berth_node_old"))
    config = load_config(
        [
            "--server",
            server.url,
            "--name",
            "h1",
            "--join-token",
            "berth_join_x",
            "--state-dir",
            str(tmp_path),
        ],
        environ={},
    )
    assert asyncio.run(Enroller(config).current()).credential == "berth_node_1"
