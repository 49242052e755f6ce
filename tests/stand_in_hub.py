"""A stand-in Hugging Face Hub on localhost, serving one model repo: enough for `hf download` (and
`huggingface-cli download` before huggingface_hub 0.34) to fetch files from it into a cache, offline."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    """The routes the download uses: a revision and its file tree, a file's metadata (HEAD) and its bytes."""

    repo = ""
    files: dict[str, bytes] = {}
    served: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, send_body: bool) -> None:
        path = self.path.split("?")[0]
        if path == f"/api/models/{self.repo}" or path.startswith(f"/api/models/{self.repo}/revision/"):
            info = {"id": self.repo, "sha": SHA, "private": False, "downloads": 0, "likes": 0, "tags": []}
            info["siblings"] = [{"rfilename": name} for name in self.files]
            return self._reply(json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body)
        if path.startswith(f"/api/models/{self.repo}/tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                for name, body in self.files.items()
            ]
            return self._reply(json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body)
        for revision in ("main", SHA):
            prefix = f"/{self.repo}/resolve/{revision}/"
            name = path[len(prefix) :]
            if path.startswith(prefix) and name in self.files:
                if send_body:
                    self.served.append(name)
                etag = f'"{hashlib.sha1(self.files[name]).hexdigest()}"'
                return self._reply(self.files[name], {"X-Repo-Commit": SHA, "ETag": etag}, send_body)
        self.send_response(404)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._route(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._route(send_body=True)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it: a repo to serve."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def stand_in_hub(repo: str, files: dict[str, bytes], hf_home: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Serve `files` as `repo`; yields the environment that points the Hub client at it (cache in `hf_home`)
    and the list of file names served so far."""
    handler = type("Handler", (_Handler,), {"repo": repo, "files": files, "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    env.update(HF_HUB_DISABLE_XET="1", HF_HUB_ENABLE_HF_TRANSFER="0", HF_HUB_DISABLE_TELEMETRY="1")
    env.update(HF_HUB_DISABLE_UPDATE_CHECK="1")  # the `hf` CLI would ask PyPI for a newer release
    try:
        yield env, handler.served
    finally:
        server.shutdown()
        server.server_close()
