"""A webhook receiver on 127.0.0.1 for the notification tests: it keeps every POST it gets, in order."""

import contextlib
import http.server
import json
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with contextlib.suppress(ValueError):
            body = json.loads(body)
        self.server.got.append({"path": self.path, "type": self.headers.get("Content-Type"), "body": body})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def receiver():
    """A running receiver: its ``url`` (a path of its own per test is fine) and ``got``, the requests so far."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.got = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
