"""`python -m tests.harness cleanup | check-hosts`.

cleanup       remove what killed test sessions left behind (never a live session's things)
check-hosts   start two e2e hosts, run a web server in one, check that its published port
              answers, that cut() really cuts it off and restore() brings it back; print timings
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

from tests.harness.session import HarnessSession, sweep_stale_sessions


def cleanup() -> int:
    removed = sweep_stale_sessions()
    print("\n".join(f"removed {item}" for item in removed) or "nothing to clean")
    return 0


def check_hosts() -> int:
    from tests.harness.hosts import TEST_IMAGE, HostPool
    from tests.harness.waiting import wait_for

    sweep_stale_sessions()
    session = HarnessSession.create()
    pool = HostPool(session, ["h1", "h2"])
    try:
        h1, h2 = pool.start()
        print(f"hosts up: {h1} {h2}; seconds: {pool.timings}")
        h1.docker.containers.run(
            TEST_IMAGE, ["httpd", "-f", "-p", "80"], name="web", detach=True, ports={"80/tcp": 8080}
        )

        def status() -> int:
            try:
                return urllib.request.urlopen(f"http://{h1.address}:8080/", timeout=2).status
            except urllib.error.HTTPError as exc:
                return exc.code  # busybox httpd has no index page: 404 is an answer

        print(f"published port answers: HTTP {wait_for(status, 20, 'the published port')}")
        h1.cut()
        try:
            status()
        except OSError as exc:
            print(f"cut: unreachable as it should be ({exc})")
        else:
            print("FAIL: the host still answers while cut")
            return 1
        h1.restore()
        print(f"restored: HTTP {wait_for(status, 20, 'the published port after restore')}")
        ping = h2.run_in_netns("wget", "-q", "-T", "2", "-O", "/dev/null", f"http://{h2.gateway}:1/")
        print(f"h2's namespace reaches its gateway (connection refused expected): rc={ping.returncode}")
        return 0
    finally:
        started = time.monotonic()
        pool.stop()
        session.close()
        print(f"torn down in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    commands = {"cleanup": cleanup, "check-hosts": check_hosts}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]]())
