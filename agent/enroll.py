"""Enrollment: trading the join token for this node's own credential (protocol section 1).

`enroll` is the HTTP call (urllib, blocking: run it in a thread). `Enroller` decides when
to call it: at first start (no credential.json), when credential.json belongs to another
server or node name, and when the control plane refuses the stored credential and a join
token is configured (enrolling again rotates the credential).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping

from agent import __version__
from agent.config import AgentConfig
from agent.credential import (
    Credential,
    CredentialFileError,
    credential_path,
    load_credential,
    save_credential,
)

log = logging.getLogger(__name__)

ENROLL_TIMEOUT = 15.0


class EnrollmentError(Exception):
    """Enrollment did not succeed this time (network, server error); worth retrying soon."""


class EnrollmentRefused(EnrollmentError):
    """The join token is unknown, expired or revoked (HTTP 401): retrying will not help soon."""


class EnrollmentRejected(EnrollmentError):
    """The request itself was refused (HTTP 400, e.g. an invalid node name)."""


def enroll(server: str, join_token: str, name: str, labels: Mapping[str, str], *, url: str) -> Credential:
    """POST the join token and return the new credential (blocking)."""
    body = json.dumps({"join_token": join_token, "name": name, "labels": dict(labels)}).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s) by config
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"berth-agent/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=ENROLL_TIMEOUT) as response:  # noqa: S310
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read())
        if exc.code == 401:
            raise EnrollmentRefused(f"the join token was refused: {detail}") from None
        if exc.code == 400:
            raise EnrollmentRejected(f"enrollment rejected: {detail}") from None
        raise EnrollmentError(f"enrollment failed: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollmentError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    if status != 201:
        raise EnrollmentError(f"enrollment answered HTTP {status}, expected 201")
    try:
        data = json.loads(payload)
        node, credential = data["node"], data["credential"]
    except (ValueError, KeyError, TypeError):
        raise EnrollmentError("enrollment answer is not {node, credential} JSON") from None
    if not isinstance(node, str) or not isinstance(credential, str) or not credential:
        raise EnrollmentError("enrollment answer is not {node, credential} JSON")
    return Credential(server=server, node=node, credential=credential)


def _detail(payload: bytes) -> str:
    """The server's reason, short; never echoes the request (which holds the join token)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload[:200].decode("utf-8", "replace") or "(no detail)"
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return json.dumps(data)[:300]


class Enroller:
    """Keeps the node's credential: from the state directory, or by enrolling."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config

    @property
    def can_enroll(self) -> bool:
        return bool(self._config.join_token)

    def stored(self) -> Credential | None:
        """The credential on disk, if any (raises CredentialFileError if it is unreadable)."""
        return load_credential(self._config.state_dir)

    async def current(self) -> Credential:
        """The credential to connect with; enrolls first when there is none usable."""
        stored = self.stored()
        config = self._config
        if stored is not None and stored.matches(config.server, config.name):
            return stored
        if stored is not None and not self.can_enroll:
            log.warning(
                "%s was issued to node %r by %s, not to %r by %s; using it anyway "
                "(give a join token to enroll as configured)",
                credential_path(config.state_dir),
                stored.node,
                stored.server,
                config.name,
                config.server,
            )
            return stored
        if stored is not None:
            log.info(
                "%s belongs to node %r at %s; enrolling as %r",
                credential_path(config.state_dir),
                stored.node,
                stored.server,
                config.name,
            )
        return await self.rotate()

    async def rotate(self) -> Credential:
        """Enroll (again) with the join token and store the new credential."""
        config = self._config
        if not config.join_token:
            raise EnrollmentRefused("no join token configured")
        log.info("enrolling node %s at %s", config.name, config.server)
        credential = await asyncio.to_thread(
            enroll, config.server, config.join_token, config.name, config.labels, url=config.enroll_url
        )
        path = save_credential(config.state_dir, credential)
        log.info("enrolled as node %s; credential stored in %s", credential.node, path)
        return credential


REFUSED_RETRY_SECONDS = 60.0


async def obtain_credential(enroller: Enroller, *, retry_after: float = 5.0) -> Credential:
    """The credential to connect with, retrying (and saying why) until there is one.

    A refused join token or an unreadable credential file is retried slowly: a human has
    to fix something, and the log line says what.
    """
    while True:
        try:
            return await enroller.current()
        except EnrollmentRefused as exc:
            log.error(
                "%s; give a valid join token with --join-token or BERTH_JOIN_TOKEN; retrying in %.0f s",
                exc,
                REFUSED_RETRY_SECONDS,
            )
            await asyncio.sleep(REFUSED_RETRY_SECONDS)
        except CredentialFileError as exc:
            log.error("%s; fix or delete it; retrying in %.0f s", exc, REFUSED_RETRY_SECONDS)
            await asyncio.sleep(REFUSED_RETRY_SECONDS)
        except (EnrollmentError, OSError) as exc:
            log.warning("%s; retrying in %.0f s", exc, retry_after)
            await asyncio.sleep(retry_after)
