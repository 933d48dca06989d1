"""The dashboard's deployment form: it turns what a person types into the API's shape,
so the API serializer validates both the same way."""

import shlex


class FormInputError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _lines(text: str) -> list[str]:
    return [
        line.strip()
        for line in (text or "").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def parse_command(text: str) -> list[str] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FormInputError("command", f"cannot split the command into words: {exc}") from None


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for number, line in enumerate(_lines(text), start=1):
        name, sep, value = line.partition("=")
        if not sep:
            raise FormInputError("env", f"line {number} ({line!r}) is not NAME=value")
        env[name.strip()] = value
    return env


def parse_ports(text: str) -> list[dict]:
    """Lines like '8080:80', '80', '5353:53/udp' (host:container/protocol, as docker -p)."""
    ports = []
    for number, line in enumerate(_lines(text), start=1):
        spec, _, protocol = line.partition("/")
        host, _, container = spec.rpartition(":")
        try:
            entry = {"container": int(container), "protocol": (protocol or "tcp").lower()}
            if host:
                entry["host"] = int(host)
        except ValueError:
            raise FormInputError(
                "ports", f"line {number} ({line!r}) is not HOST:CONTAINER[/tcp|udp], e.g. 8080:80"
            ) from None
        ports.append(entry)
    return ports


def deployment_payload(form: dict) -> tuple[dict, dict[str, list[str]]]:
    """The API body for what the form holds, and the fields that could not be read
    (left out of the body, so the API's validation still reports every other problem)."""
    payload: dict = {"name": (form.get("name") or "").strip(), "image": (form.get("image") or "").strip()}
    errors: dict[str, list[str]] = {}
    readers = {
        "replicas": lambda text: _whole_number("replicas", text),
        "command": parse_command,
        "env": parse_env,
        "ports": parse_ports,
    }
    for field, read in readers.items():
        try:
            payload[field] = read(form.get(field, ""))
        except FormInputError as exc:
            errors.setdefault(exc.field, []).append(str(exc))
    try:
        payload["node_selector"] = parse_env(form.get("node_selector", ""))
    except FormInputError as exc:
        errors.setdefault("node_selector", []).append(str(exc).replace("NAME=value", "key=value"))
    if form.get("strategy"):
        payload["strategy"] = form["strategy"]
    if (form.get("max_per_node") or "").strip():
        try:
            payload["max_per_node"] = _whole_number("max_per_node", form["max_per_node"])
        except FormInputError as exc:
            errors.setdefault(exc.field, []).append(str(exc))
    resources = {k: form[k].strip() for k in ("cpu", "memory") if (form.get(k) or "").strip()}
    if resources:
        payload["resources"] = resources
    _health_and_updates(form, payload, errors)
    return payload, errors


def _health_and_updates(form: dict, payload: dict, errors: dict[str, list[str]]) -> None:
    """Restart policy, an HTTP readiness probe, and the update strategy (the API has more)."""
    if form.get("restart_policy"):
        payload["restart_policy"] = form["restart_policy"]
    path, port = (form.get("readiness_path") or "").strip(), (form.get("readiness_port") or "").strip()
    if path or port:
        try:
            payload["readiness_probe"] = {
                "http_get": {"path": path or "/", "port": _whole_number("readiness_probe", port)},
                "period_seconds": 2,
            }
        except FormInputError:
            errors.setdefault("readiness_probe", []).append("port: must be a whole number")
    if form.get("update_type"):
        strategy = {"type": form["update_type"]}
        for field in ("max_surge", "max_unavailable"):
            value = (form.get(field) or "").strip()
            if value:
                strategy[field] = int(value) if value.isdigit() else value
        payload["update_strategy"] = strategy
    if form.get("on_failure") == "rollback":
        payload["on_failure"] = "rollback"


def _whole_number(field: str, text) -> int:
    try:
        return int(str(text or "0").strip())
    except ValueError:
        raise FormInputError(field, "must be a whole number") from None
