"""A minimal local stand-in for the Hugging Face Hub's HTTP API: just what huggingface_hub's own
create_repo / repo_info / upload_folder (single-commit path) / snapshot_download call. The test
talks to it through huggingface_hub itself, over real HTTP on localhost."""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.repos = {}  # repo_id → {"private": bool, "files": {path: bytes}, "sha": str}
        self.requests = []  # (method, path, status): what huggingface_hub asked
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(hub):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, content_type="application/json"):
                hub.requests.append((self.command, self.path, status))
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _missing(self):
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})

            def do_POST(self):
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(self._body())
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if repo_id in hub.repos:
                        return self._send(
                            409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"}
                        )
                    hub.repos[repo_id] = {
                        "private": req.get("visibility", "private" if req.get("private") else "public") != "public",
                        "files": {},
                        "sha": "0" * 40,
                    }
                    return self._send(200, {"url": f"{hub.endpoint}/{repo_id}"})
                if path == "/api/validate-yaml":  # the model card's metadata, checked before a commit
                    self._body()
                    return self._send(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not m or m.group(1) not in hub.repos:
                    return self._missing()
                repo = hub.repos[m.group(1)]
                if m.group(2) == "preupload":
                    files = json.loads(self._body())["files"]
                    return self._send(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                for line in self._body().decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        repo["files"][entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                repo["sha"] = hashlib.sha1(repr(sorted((k, v) for k, v in repo["files"].items())).encode()).hexdigest()
                return self._send(
                    200,
                    {
                        "commitUrl": f"{hub.endpoint}/{m.group(1)}/commit/{repo['sha']}",
                        "commitOid": repo["sha"],
                        "pullRequestUrl": None,
                    },
                )

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
                if m:
                    repo = hub.repos.get(m.group(1))
                    if repo is None:
                        return self._missing()
                    return self._send(
                        200,
                        {
                            "id": m.group(1),
                            "sha": repo["sha"],
                            "private": repo["private"],
                            "siblings": [{"rfilename": name} for name in repo["files"]],
                        },
                    )
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
                if m:
                    repo = hub.repos.get(m.group(1))
                    if repo is None:
                        return self._missing()
                    return self._send(
                        200,
                        [
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in repo["files"].items()
                        ],
                    )
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m and m.group(1) in hub.repos and m.group(3) in hub.repos[m.group(1)]["files"]:
                    repo = hub.repos[m.group(1)]
                    data = repo["files"][m.group(3)]
                    return self._send(
                        200,
                        data,
                        {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                        content_type="application/octet-stream",
                    )
                if m:
                    return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                return self._missing()

        return Handler


def hub_error(cls, status: int, message: str):
    """A huggingface_hub error of class `cls` as the Hub answers it (status code, message)."""
    import httpx2  # huggingface_hub's HTTP client: its errors carry the response

    return cls(
        message, response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    )
