"""A tiny busybox image built from the host's /bin/busybox, for machines with no registry.

The root filesystem is Debian's statically linked busybox (package busybox-static) plus one
symlink per applet (sh, sleep, httpd, wget, nc, ...), imported with `docker import`. It is
enough for demo deployments and for every e2e test that needs a process in a container.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
import time
from pathlib import Path

from devtools.services import MAKE_DEPS_HINT, ServiceError

BUSYBOX = Path("/bin/busybox")
CHANGES = ['CMD ["/bin/sh"]']
# Applets the tests rely on, checked to exist so a surprising busybox build fails loudly.
REQUIRED_APPLETS = ("sh", "sleep", "httpd", "echo", "cat", "ls", "wget", "nc", "env", "true", "false")


def _is_static(path: Path) -> bool:
    """True if the ELF file has no PT_INTERP program header (no dynamic loader needed)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only; Debian amd64/arm64
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox_rootfs_tar(busybox: Path = BUSYBOX) -> bytes:
    """A tar archive of a root filesystem made of `busybox` and its applet symlinks."""
    if not busybox.exists():
        raise ServiceError(f"{busybox} is missing: {MAKE_DEPS_HINT} (package busybox-static).")
    if not _is_static(busybox):
        raise ServiceError(
            f"{busybox} is dynamically linked, so it cannot run alone in an image: "
            "install busybox-static instead of busybox (`make deps`)."
        )
    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    applet_paths = sorted({line.strip().lstrip("/") for line in listing.stdout.split() if line.strip()})
    names = {path.rsplit("/", 1)[-1] for path in applet_paths}
    missing = [name for name in REQUIRED_APPLETS if name not in names]
    if missing:
        raise ServiceError(f"{busybox} lacks applets {missing}: install Debian's busybox-static.")

    now = int(time.time())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        for directory in (
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "etc",
            "root",
            "var",
            "var/www",
            "proc",
            "sys",
            "dev",
        ):
            add_dir(directory)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", busybox.read_bytes(), 0o755)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for path in applet_paths:
            if path == "bin/busybox":
                continue
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "/bin/busybox", 0o777, now
            tar.addfile(info)
    return buffer.getvalue()


def import_busybox(client, ref: str, rootfs: bytes | None = None) -> str:
    """Import the busybox root filesystem into the engine behind `client` as `ref` (repo:tag).

    `client` is a docker.DockerClient. Returns the image id.
    """
    repository, _, tag = ref.rpartition(":")
    if not repository:
        repository, tag = ref, "latest"
    data = rootfs if rootfs is not None else busybox_rootfs_tar()
    client.api.import_image_from_data(data, repository=repository, tag=tag, changes=CHANGES)
    return client.images.get(ref).id


def ensure_busybox(client, ref: str) -> bool:
    """Import `ref` unless the engine already has it. True if it was imported now."""
    import docker.errors

    try:
        client.images.get(ref)
        return False
    except docker.errors.ImageNotFound:
        import_busybox(client, ref)
        return True
