"""Helpers for the live-stream e2e and browser tests: WebSocket clients that talk to the
real control plane with the admin's API token in the first message (never in the URL)."""

from __future__ import annotations

import json
import time

from websockets.sync.client import connect


def ws_url(control_plane, path: str) -> str:
    return control_plane.base_url.replace("http://", "ws://") + path


class Socket:
    """A JSON WebSocket to the control plane; `until(condition, timeout)` reads until true."""

    def __init__(self, control_plane, path: str, *, terminal: bool = False) -> None:
        self.terminal = terminal
        self.ws = connect(  # closed by close(): the direct, not the context-manager, form
            ws_url(control_plane, path), origin=control_plane.base_url, open_timeout=10, legacy=True
        )
        self.token = control_plane.api_token
        self.received: list[dict] = []

    def send(self, message: dict, *, auth: bool = False) -> None:
        self.ws.send(json.dumps({**message, "token": self.token} if auth else message))

    def until(self, condition, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; last messages: {self.received[-5:]}"
                )
            try:
                message = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                continue
            self.received.append(message)
            if self.terminal and message.get("type") == "output" and "\x1b[6n" in message["data"]:
                # busybox's line editor asks where the cursor is and waits: answer as xterm.js does.
                self.send({"type": "input", "data": "\x1b[1;1R"})
            if condition(message):
                return message

    def close(self) -> None:
        self.ws.close()
