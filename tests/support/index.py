"""
A package index of the tests' own: the wheelhouse served as a PEP 503 "simple" index on
127.0.0.1, each file with its sha256, for the tools that lock against an index and not a
folder (Poetry). Started and stopped by the test that needs it.
"""

import contextlib
import functools
import hashlib
import html
import http.server
import pathlib
import re
import shutil
import threading


def _project(filename):
    """The normalized project name of a wheel or sdist file name."""
    return re.sub(r"[-_.]+", "-", filename.split("-")[0]).lower()


def build(wheelhouse, dest):
    """``dest/simple/<project>/index.html`` linking to ``dest/files/<file>#sha256=...`` for every wheel."""
    dest = pathlib.Path(dest)
    (dest / "files").mkdir(parents=True)
    projects = {}
    for wheel in sorted(pathlib.Path(wheelhouse).glob("*.whl")):
        shutil.copy2(wheel, dest / "files" / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        projects.setdefault(_project(wheel.name), []).append(f"{wheel.name}#sha256={digest}")
    for project, files in projects.items():
        (dest / "simple" / project).mkdir(parents=True)
        links = "".join(f'<a href="../../files/{html.escape(f)}">{html.escape(f.split("#")[0])}</a>\n' for f in files)
        (dest / "simple" / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    root = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (dest / "simple" / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{root}</body></html>\n")
    return dest


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


@contextlib.contextmanager
def serve(wheelhouse, dest):
    """The index of ``wheelhouse`` built in ``dest`` and served: yields its ``.../simple/`` URL."""
    root = build(wheelhouse, dest)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
