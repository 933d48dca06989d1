"""E2E hosts: network namespaces, each with its own Docker engine and (when a test asks) a Berth agent.

A host is a network namespace `berthe2e-<tag>-<name>` joined to the machine by a veth pair:
the machine side `be2e-<slot>` has 10.250.<slot>.1/30 (the address agents use to reach the
control plane), the namespace side `eth0` has 10.250.<slot>.2/30 (the host's own address,
where published ports answer). Its containerd and dockerd run inside the namespace via
`nsenter --net=...` with their own socket, data root, exec root, pid file, and a cgroup
parent named like the namespace. Engines start once per session; tests get clean hosts
(no agent, no containers, link up) from `Host.reset()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devtools.images import busybox_rootfs_tar, import_busybox
from devtools.services import DockerEngine, die_with_parent, stop_process, tail, wait_until
from tests.harness.session import (
    VETH_PREFIX,
    GlobalLock,
    HarnessSession,
    claimed_slots,
    delete_slot_network,
    ip,
    kill_pids,
    list_links,
    live_session_roots,
    processes_of,
    remove_cgroups,
    slot_blackhole,
    unmount_under,
    unreachable_slots,
)

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGE = "berth-test/busybox:1"
# Variables an agent must not see: it talks to the control plane only through its URL.
_AGENT_ENV_DROP = (
    "DATABASE_URL", "REDIS_URL", "BERTH_SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DOCKER_HOST",
    "BERTH_SERVER", "BERTH_JOIN_TOKEN", "BERTH_NODE_NAME", "BERTH_STATE_DIR", "BERTH_LABELS",
)  # fmt: skip
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def child_env(session: HarnessSession, drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment for processes the harness starts: marked as this session's, no proxies."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS and k not in drop}
    env.update(session.env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Host:
    """One e2e host. Tests use `name`, `address`, `docker` and the methods below."""

    def __init__(self, session: HarnessSession, name: str, slot: int) -> None:
        self.session = session
        self.name = name
        self.slot = slot
        self.netns = session.netns_name(name)
        self.veth = f"{VETH_PREFIX}{slot}"
        self.gateway = f"10.250.{slot}.1"  # machine side: agents reach the control plane here
        self.address = f"10.250.{slot}.2"  # the host's own address: published ports answer here
        self.dir = session.root / "hosts" / name
        self.state_dir = self.dir / "agent-state"
        self.agent_log = self.dir / "agent.log"
        self.agent: subprocess.Popen | None = None
        self._docker = None
        self.engine = DockerEngine(
            socket_path=self.dir / "docker.sock",
            data_root=self.dir / "data",
            exec_root=self.dir / "exec",
            pidfile=self.dir / "docker.pid",
            log_dir=self.dir,
            netns=self.netns,
            cgroup_parent=f"/{self.netns}",
            own_containerd=True,
            config_file=self.dir / "daemon.json",
            env=child_env(session),
        )

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} agent={'running' if self.agent_running else 'stopped'}>"

    # --- the namespace -------------------------------------------------------------------------

    def create_network(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "daemon.json").write_text("{}\n")  # ignore /etc/docker/daemon.json
        ip("netns", "add", self.netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("addr", "add", f"{self.gateway}/30", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
        ip("-n", self.netns, "link", "set", "eth0", "up")
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip("route", "replace", "unreachable", slot_blackhole(self.slot))

    def destroy(self) -> None:
        """Stop everything of this host and remove its namespace, veth, cgroups, mounts and files."""
        self.kill_agent()
        if self.engine.running:
            try:
                self.remove_all_containers()
            except Exception:  # a broken engine must not stop the teardown
                pass
        self.engine.stop(timeout=20)
        kill_pids(processes_of(self.dir, netns=[self.netns]))
        remove_cgroups(self.netns)
        ip("netns", "delete", self.netns, check=False)
        delete_slot_network(self.slot)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_in_netns(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command on the host's network (e.g. `wget -qO- http://127.0.0.1:8080/`)."""
        return subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    # --- the engine ----------------------------------------------------------------------------

    @property
    def docker_url(self) -> str:
        return self.engine.url

    @property
    def docker(self):
        """A docker.DockerClient for this host's engine."""
        if self._docker is None:
            import docker

            self._docker = docker.DockerClient(base_url=self.docker_url, version="auto", timeout=60)
        return self._docker

    @property
    def engine_running(self) -> bool:
        return self.engine.running

    def kill_engine(self, sig: int = signal.SIGKILL) -> None:
        """Kill dockerd by pid (containerd and running containers survive, as after a real crash)."""
        self.engine.kill(sig)

    def start_engine(self, timeout: float = 60.0) -> None:
        """Start the engine again after kill_engine (it restores its containers)."""
        if not self.engine.running:
            self.engine.start(timeout)

    # --- the agent -----------------------------------------------------------------------------

    def start_agent(
        self,
        server_url: str,
        join_token: str | None,
        labels: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> subprocess.Popen:
        """Start `python -m agent` inside the namespace against this host's engine.

        Output goes to `agent_log`. The state directory survives kill_agent/start_agent within
        a test (so restarts reuse the credential), and is wiped between tests.
        """
        if self.agent_running:
            raise RuntimeError(f"the agent on {self.name} is already running: kill_agent() first")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "agent",
            "--server", server_url,
            "--name", name or self.name,
            "--docker-host", self.docker_url,
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if join_token:
            argv += ["--join-token", join_token]
        if labels:
            argv += ["--labels", ",".join(f"{key}={value}" for key, value in labels.items())]
        argv += list(extra_args)
        with open(self.agent_log, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} start_agent: {' '.join(argv)}\n".encode())
            log.flush()
            self.agent = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *argv],
                cwd=REPO,
                env=child_env(self.session, drop=_AGENT_ENV_DROP),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        return self.agent

    def kill_agent(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int | None:
        """Send `sig` to the agent, wait for it to exit (SIGKILL after `timeout`); returns its exit code."""
        if self.agent is None:
            return None
        code = stop_process(self.agent, sig, timeout)
        self.agent = None
        return code

    @property
    def agent_running(self) -> bool:
        return self.agent is not None and self.agent.poll() is None

    def agent_output(self, lines: int = 80) -> str:
        return tail(self.agent_log, lines)

    # --- the link ------------------------------------------------------------------------------

    def cut(self) -> None:
        """Take the machine side of the veth down: the host can no longer reach anything, nor be reached.

        Connections fail fast ("unreachable") from the machine's side; from inside the
        namespace packets are simply lost, as on a pulled cable.
        """
        ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        """Bring the link back up (and wait until it carries traffic)."""
        ip("link", "set", self.veth, "up")
        wait_until(
            lambda: Path(f"/sys/class/net/{self.veth}/operstate").read_text().strip() == "up",
            10, f"link {self.veth} up",
        )  # fmt: skip

    @property
    def is_cut(self) -> bool:
        return Path(f"/sys/class/net/{self.veth}/operstate").read_text().strip() != "up"

    # --- containers ----------------------------------------------------------------------------

    def berth_containers(self, all: bool = True) -> list:
        """Containers labelled berth.managed=true (stopped ones too unless all=False).
        The SDK's `containers.list` inspects each container it lists and fails on one
        removed in between (an agent's removal finishing): those are skipped here."""
        import docker.errors

        found = []
        for row in self.docker.api.containers(all=all, filters={"label": "berth.managed=true"}):
            try:
                found.append(self.docker.containers.get(row["Id"]))
            except docker.errors.NotFound:
                pass
        return found

    def remove_berth_containers(self) -> None:
        self._remove({"label": "berth.managed=true"})

    def remove_all_containers(self) -> None:
        self._remove({})

    def _remove(self, filters: dict) -> None:
        """Remove these containers, and wait until they are gone: one whose removal an agent
        started (killed since) is answered 409 and goes by itself."""
        import docker.errors

        ids = {row["Id"] for row in self.docker.api.containers(all=True, filters=filters)}
        for container_id in ids:
            try:
                self.docker.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: its removal is already in progress
                    raise
        wait_until(
            lambda: not ids & {row["Id"] for row in self.docker.api.containers(all=True, filters=filters)},
            30, f"{len(ids)} container(s) on {self.name} removed",
        )  # fmt: skip

    # --- between tests -------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a clean host: no agent, link up, engine running, no containers, no agent state."""
        self.kill_agent()
        if self.is_cut:
            self.restore()
        self.start_engine()
        self.remove_all_containers()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.agent_log.write_bytes(b"")


class HostPool:
    """Starts `count` hosts side by side and tears them all down again."""

    def __init__(self, session: HarnessSession, names: Sequence[str]) -> None:
        self.session = session
        self.names = list(names)
        self.hosts: list[Host] = []
        self.timings: dict[str, float] = {}

    def _allocate(self) -> list[Host]:
        """Pick free 10.250.<slot>.0/30 subnets and record them in the session before using them."""
        with GlobalLock():
            used = claimed_slots(live_session_roots()) | {
                int(name.removeprefix(VETH_PREFIX))
                for name in list_links()
                if name.removeprefix(VETH_PREFIX).isdigit()
            }
            addresses = ip("-o", "-4", "addr", "show", check=False).stdout
            used |= {n for n in range(1, 255) if f" 10.250.{n}." in addresses} | unreachable_slots()
            free = [n for n in range(1, 255) if n not in used]
            if len(free) < len(self.names):
                raise RuntimeError("no free 10.250.<n>.0/30 subnets left for e2e hosts")
            hosts = []
            for name, slot in zip(self.names, free, strict=False):
                host = Host(self.session, name, slot)
                host.dir.mkdir(parents=True, exist_ok=True)
                (host.dir / "slot").write_text(str(slot))
                hosts.append(host)
            return hosts

    def start(self, timeout: float = 90.0) -> list[Host]:
        if os.geteuid() != 0:
            raise PermissionError("e2e hosts need root (network namespaces, Docker engines)")
        started = time.monotonic()
        self.hosts = self._allocate()
        try:
            for host in self.hosts:
                host.create_network()
            for host in self.hosts:
                host.engine.spawn()
            for host in self.hosts:
                host.engine.wait_ready(timeout)
            self.timings["engines"] = time.monotonic() - started
            rootfs = busybox_rootfs_tar()
            with ThreadPoolExecutor(len(self.hosts)) as pool:
                list(pool.map(lambda h: import_busybox(h.docker, TEST_IMAGE, rootfs), self.hosts))
            self.timings["engines+image"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self.hosts

    def stop(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.hosts))) as pool:
            list(pool.map(Host.destroy, self.hosts))
        self.hosts = []
