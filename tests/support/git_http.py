"""
A git server over HTTP on 127.0.0.1, as a hosting service is: git's own smart-HTTP
CGI (``git http-backend``) behind HTTP Basic authentication, serving the bare
repositories of one folder. A request without the right user and token gets 401.
"""

import base64
import http.server
import os
import subprocess
import threading

BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHTTP:
    def __init__(self, root, user, token):
        self.root, self.expected = str(root), "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.requests = []  # (method, path, authorised)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's names)
                self._serve()

            def do_POST(self):  # noqa: N802
                self._serve()

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                authorised = self.headers.get("Authorization") == server.expected
                server.requests.append((self.command, self.path, authorised))
                if not authorised:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "GIT_PROJECT_ROOT": server.root, "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                    "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": "deploy",
                    "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)), "PATH": "/usr/bin:/bin",
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }  # fmt: skip
                out = subprocess.run([BACKEND], input=body, env=env, capture_output=True, check=False).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                headers = [line.split(b":", 1) for line in head.split(b"\r\n") if b":" in line]
                status = next((int(v.split()[0]) for k, v in headers if k.lower() == b"status"), 200)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() != b"status":
                        self.send_header(key.decode(), value.decode().strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def available():
        return os.access(BACKEND, os.X_OK)

    @classmethod
    def serving(cls, repository, folder, user, token):
        """A server of ``folder`` holding a bare clone of ``repository`` as ``app.git`` (not started yet)."""
        folder.mkdir()
        subprocess.run(["git", "clone", "--quiet", "--bare", str(repository), str(folder / "app.git")], check=True)
        return cls(folder, user, token)
