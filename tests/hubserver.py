"""A local stand-in for huggingface.co, for tests only.

The Hub cannot be reached from these machines, so this serves the small part of its HTTP API that
`huggingface_hub.snapshot_download` (the real client, unmodified) uses:

- ``GET /api/{models|datasets}/<repo>/revision/<rev>``: repo info (``sha``, ``siblings``);
- ``HEAD|GET /[datasets/]<repo>/resolve/<sha>/<file>``: ``ETag``, ``X-Repo-Commit``, ``Content-Length``,
  ``Range`` for resumed downloads.

Gated repos answer 401 with ``X-Error-Code: GatedRepo`` unless ``Authorization: Bearer <token>`` matches, and
unknown repos 404 ``RepoNotFound``, the headers huggingface_hub turns into its typed errors. Every request is
recorded so tests can check what a download really fetched and which token it sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHA = "0123456789abcdef0123456789abcdef01234567"
_INFO = re.compile(r"^/api/(models|datasets)/(.+)/revision/([^/]+)$")
_RESOLVE = re.compile(r"^/(datasets/)?(.+?)/resolve/([^/]+)/(.+)$")


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # set: the repo is gated and needs this token


@dataclass
class Hub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # ("model" | "dataset", repo id)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def add(self, kind: str, repo_id: str, files: dict[str, bytes], token: str | None = None) -> None:
        self.repos[(kind, repo_id)] = Repo(files, token)

    def gets(self, suffix: str) -> int:
        return sum(1 for method, path, _ in self.requests if method == "GET" and path.endswith(suffix))

    def start(self) -> Hub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path.split("?")[0], self.headers.get("Authorization")))
                path = self.path.split("?")[0]
                if m := _INFO.match(path):
                    repo = self._repo(m[1].rstrip("s"), m[2])
                    if repo is not None:
                        info = {"id": m[2], "sha": SHA, "siblings": [{"rfilename": n} for n in sorted(repo.files)]}
                        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                elif m := _RESOLVE.match(path):
                    repo = self._repo("dataset" if m[1] else "model", m[2])
                    if repo is not None and m[4] not in repo.files:
                        self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                    elif repo is not None:
                        self._file(repo.files[m[4]], body)
                else:
                    self._send(404, b"", {}, body)

            def _repo(self, kind: str, repo_id: str) -> Repo | None:
                repo = hub.repos.get((kind, repo_id))
                if repo is None:
                    self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, True)
                elif repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    self._send(401, b"", {"X-Error-Code": "GatedRepo"}, True)
                    return None
                return repo

            def _file(self, data: bytes, body: bool) -> None:
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": SHA}
                start = 0
                if (rng := self.headers.get("Range")) and (m := re.match(r"bytes=(\d+)-", rng)):
                    start = int(m[1])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(206 if start else 200, data[start:], headers, body)

            def _send(self, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
