"""``salt/_utils/vumi_health.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import http.server
import threading
import types

import pytest

import vumi_health


@pytest.mark.parametrize("status, path, healthy", [(404, None, True), (500, None, False), (404, "/health", False)])
def test_the_probe_rule(cfg, status, path, healthy):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alive = types.SimpleNamespace(poll=lambda: None)
    try:
        ok, evidence = vumi_health.probe(dict(cfg, health_path=path, health_timeout=5), server.server_port, alive)
    finally:
        server.shutdown()
    assert ok is healthy and f"answered HTTP {status}" in evidence
