"""What rtcts adds to the HAProxy config Serve writes, so that the public port answers
like the app (issue #11 item 15).

Serve's HAProxy mode renders a fixed template (`ray.serve._private.haproxy_templates`)
with no hook for any of this. So `rtcts run` names a small wrapper as Serve's haproxy
binary (`RAY_SERVE_HAPROXY_BINARY_PATH`): each time Serve starts or reloads HAProxy, the
wrapper rewrites the config Serve has just written (`-f <path>`, in place, under Serve's
own lock file) and then execs the real haproxy with the same arguments, in the same
process: Serve follows that PID, and finds its workers by the config path in their
command line, so both must stay as Serve made them.

`harden` makes these changes, each anchored on the template's text:

- **413 from the edge.** A request declaring a Content-Length over the ingress's limit
  is answered by HAProxy itself (a Lua service) with the app's 413 body, and its body is
  read and dropped before the connection can close. Left to the app, the replica answers
  413 and closes while the body is still arriving: the client's connection is reset
  under it, and a client that reads only after sending (any asyncio client) never sees
  the answer. A body sent without a Content-Length (chunked) is counted by the app, as
  on the replica's own port.
- **OpenAI-shaped errors.** HAProxy's own answers (500, 502, 503, 504) are the app's
  JSON error body with their status; Serve's template turns 502, 503 and 504 into a
  text/plain "500 Internal Server Error".
- **Private pages.** The stats page and the Prometheus endpoint listen on 127.0.0.1
  (Serve binds them on all interfaces), and the admin socket, which can drain servers
  and change their addresses, is mode 600 (Serve's is 666).

Guarantees:
- a config the wrapper cannot harden (a Serve upgrade moved an anchor) is never served:
  the wrapper exits non-zero before exec, Serve reports HAProxy's start as failed, and
  `rtcts run` stops with the reason on stderr;
- hardening is idempotent: a config already hardened is left as it is;
- the rewrite is atomic (a new file renamed over the old one): HAProxy never reads half
  a config.
"""

from __future__ import annotations

import fcntl
import http
import itertools
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from serve_app.errors import EdgeError as EdgeError

MARK = "# hardened by rtcts (serve_app/local/haproxy_edge.py)\n"
SERVICE = "rtcts_payload_too_large"
ERROR_STATUSES = (500, 502, 503, 504)
"""HAProxy's own answers to a parsed request that this config can give. (The errors its
HTTP/1 parser gives before there is a request, 400 for a malformed one and the like,
are HAProxy's built-in pages: `errorfile` does not reach them in 2.8.)"""


@dataclass(frozen=True)
class EdgePages:
    """What HAProxy answers by itself, as the app would."""

    max_body_bytes: int
    """The ingress's body limit: a declared Content-Length above it gets `too_large`."""
    too_large: bytes
    """The app's 413 body (JSON)."""
    errors: Mapping[int, bytes]
    """A JSON error body for each of `ERROR_STATUSES`."""


@dataclass(frozen=True)
class EdgeRules:
    """What the wrapper needs at each start: written by `write_edge`, read by `main`."""

    haproxy: Path
    """The real haproxy binary."""
    max_body_bytes: int
    lua: Path
    """The Lua file that registers the 413 service."""
    errorfiles: Mapping[int, Path]

    def dump(self) -> str:
        return json.dumps(
            {
                "haproxy": str(self.haproxy),
                "max_body_bytes": self.max_body_bytes,
                "lua": str(self.lua),
                "errorfiles": {str(k): str(v) for k, v in self.errorfiles.items()},
            },
            indent=2,
        )

    @classmethod
    def load(cls, text: str) -> EdgeRules:
        data = json.loads(text)
        return cls(
            haproxy=Path(data["haproxy"]),
            max_body_bytes=int(data["max_body_bytes"]),
            lua=Path(data["lua"]),
            errorfiles={int(k): Path(v) for k, v in data["errorfiles"].items()},
        )


def write_edge(directory: Path, haproxy: Path, pages: EdgePages) -> Path:
    """Write the wrapper and what it needs into `directory`; return the wrapper's path
    (what Serve is told to run as haproxy)."""
    missing = set(ERROR_STATUSES) - set(pages.errors)
    if missing:
        raise ValueError(f"no error body for {sorted(missing)}")
    errors_dir = directory / "errors"
    errors_dir.mkdir(exist_ok=True)
    errorfiles: dict[int, Path] = {}
    for status in ERROR_STATUSES:
        errorfiles[status] = errors_dir / f"{status}.http"
        errorfiles[status].write_bytes(http_response(status, pages.errors[status]))
    lua = directory / "too_large.lua"
    lua.write_text(too_large_lua(pages.too_large), encoding="utf-8")
    rules = EdgeRules(haproxy, pages.max_body_bytes, lua, errorfiles)
    rules_path = directory / "edge.json"
    rules_path.write_text(rules.dump(), encoding="utf-8")
    wrapper = directory / "haproxy"
    command = [sys.executable, "-m", __name__, str(rules_path), "--"]
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Serve's haproxy (RAY_SERVE_HAPROXY_BINARY_PATH): rtcts hardens the config Serve\n"
        f"# wrote, then runs {haproxy} in this process (serve_app/local/haproxy_edge.py).\n"
        f'exec {shlex.join(command)} "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o700)
    return wrapper


def http_response(status: int, body: bytes) -> bytes:
    """A whole HTTP response, as HAProxy's `errorfile` wants it."""
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "cache-control: no-cache\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def too_large_lua(body: bytes) -> str:
    """The Lua service that answers 413 with `body`, then reads and drops the request
    body, so the connection is never closed on a client that is still sending."""
    text = body.decode("utf-8")
    if "]==]" in text:
        raise ValueError("the 413 body cannot be a Lua long string")
    return f"""-- rtcts: the answer to a body over the ingress's limit (haproxy_edge.py)
local BODY = [==[{text}]==]

core.register_service("{SERVICE}", "http", function(applet)
    applet:set_status(413)
    applet:add_header("content-type", "application/json")
    applet:add_header("content-length", tostring(#BODY))
    applet:add_header("cache-control", "no-cache")
    applet:start_response()
    applet:send(BODY)
    -- Drop the body as it comes (HAProxy has already told a client that sent
    -- "Expect: 100-continue" to go on): closing before it ends, or before the client
    -- gives up and closes, resets the client's connection under the answer.
    repeat
        local chunk = applet:receive(65536)
    until chunk == nil or chunk == ""
end)
"""


def harden(config: str, rules: EdgeRules) -> str:
    """Serve's HAProxy config with rtcts's edge rules (the module docstring); raises
    EdgeError when an anchor is not found exactly once."""
    if config.startswith(MARK):
        return config
    lua = f'global\n    lua-load-per-thread "{rules.lua}"\n'
    errorfiles = "".join(
        f'errorfile {status} "{path}"\n' for status, path in sorted(rules.errorfiles.items())
    )
    too_large = (
        f"http-request use-service lua.{SERVICE} "
        f"if {{ req.hdr_val(content-length) gt {rules.max_body_bytes} }}\n"
    )
    edits: list[tuple[str, str, Callable[[re.Match[str]], str]]] = [
        ("global section", r"^global\n", lambda m: lua),
        (
            "admin socket mode",
            r"^([ \t]*stats socket \S+) mode 666 ",
            lambda m: f"{m[1]} mode 600 ",
        ),
        (
            "502/503/504 errorfiles",
            r"^([ \t]+)errorfile 502 \S+\n[ \t]+errorfile 503 \S+\n[ \t]+errorfile 504 \S+\n",
            lambda m: "".join(m[1] + line for line in errorfiles.splitlines(keepends=True)),
        ),
        (
            "Prometheus bind",
            r"^(frontend prometheus\n[ \t]+bind )\*?:(\d+)$",
            lambda m: f"{m[1]}127.0.0.1:{m[2]}",
        ),
        (
            "stats bind",
            r"^(listen stats\n[ \t]+bind )\*?:(\d+)$",
            lambda m: f"{m[1]}127.0.0.1:{m[2]}",
        ),
        (
            "HTTP frontend",
            r"^(frontend http_frontend\n([ \t]+)bind \S+\n)",
            lambda m: m[1] + m[2] + too_large,
        ),
    ]
    for name, pattern, replace in edits:
        config, count = re.subn(pattern, replace, config, flags=re.MULTILINE)
        if count != 1:
            raise EdgeError(f"{name}: expected once in Serve's HAProxy config, found {count}")
    return MARK + config


def harden_file(path: Path, rules: EdgeRules) -> None:
    """Harden the config at `path` in place, under Serve's lock (`<path>.lock`)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            hardened = harden(path.read_text(encoding="utf-8"), rules)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".haproxy.cfg.")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(hardened)
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def config_path(args: Sequence[str]) -> Path | None:
    """The file after `-f` in haproxy's arguments."""
    for flag, value in itertools.pairwise(args):
        if flag == "-f":
            return Path(value)
    return None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """`python -m serve_app.local.haproxy_edge RULES.json -- HAPROXY_ARGS...`"""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        sys.exit("usage: python -m serve_app.local.haproxy_edge RULES.json -- HAPROXY_ARGS...")
    rules = EdgeRules.load(Path(args[0]).read_text(encoding="utf-8"))
    haproxy_args = args[2:]
    path = config_path(haproxy_args)
    if path is not None:
        try:
            harden_file(path, rules)
        except (EdgeError, OSError) as exc:
            sys.exit(f"rtcts: cannot harden Serve's HAProxy config {path}: {exc}")
    os.execv(rules.haproxy, [str(rules.haproxy), *haproxy_args])


if __name__ == "__main__":
    main()
