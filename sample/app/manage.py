#!/usr/bin/env python3
"""Django-like management commands for the sample app.

Usage: manage.py [--settings=MODULE] COMMAND [ARGS]

The settings module defaults to $DJANGO_SETTINGS_MODULE, else
``environments.default``; it is imported with this directory (the code
folder) on sys.path.  ``--settings`` is also accepted after the command.
"""

import argparse
import importlib
import json
import os
import select
import signal
import socketserver
import sqlite3
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

CODE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SETTINGS = "environments.default"
DEFAULT_DATABASE = "tmp/sample.sqlite"
#: Seconds a stopping server gives the requests in flight to finish.
STOP_GRACE = 5.0

TABLES = {
    "visits": (
        "CREATE TABLE IF NOT EXISTS visits ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " path TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    ),
    "syncs": (
        "CREATE TABLE IF NOT EXISTS syncs ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " settings TEXT NOT NULL,"
        " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    ),
}


def load_settings(name):
    if CODE_DIR not in sys.path:
        sys.path.insert(0, CODE_DIR)
    # Make the choice visible to the WSGI app (and any child process).
    os.environ["DJANGO_SETTINGS_MODULE"] = name
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # an environment without its own settings file (a topics/... branch)
        # runs with the defaults, as the Fabric-era app did
        if exc.name != name or not name.startswith("environments."):
            sys.exit("manage.py: cannot import settings %r: %s" % (name, exc))
        print("manage.py: no settings module %r; using %s" % (name, DEFAULT_SETTINGS),
              file=sys.stderr)
        os.environ["DJANGO_SETTINGS_MODULE"] = DEFAULT_SETTINGS
        return importlib.import_module(DEFAULT_SETTINGS)
    except ImportError as exc:
        sys.exit("manage.py: cannot import settings %r: %s" % (name, exc))


def cmd_syncdb(args, settings):
    path = getattr(settings, "DATABASE", DEFAULT_DATABASE)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        with conn:
            for sql in TABLES.values():
                conn.execute(sql)
            conn.execute("INSERT INTO syncs (settings) VALUES (?)",
                         (args.settings,))
    finally:
        conn.close()
    print("Synced %d tables into %s" % (len(TABLES), path))
    return 0


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # finish_in_flight() waits for them, with a limit
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind() calls socket.getfqdn(), which can hang
        # on DNS when there is no network; the bare host is good enough.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port
        self.setup_environ()

    def drain(self):
        """Serve the connections already waiting in the listen backlog:
        closing the socket would reset them."""
        while select.select([self], [], [], 0)[0]:
            self._handle_request_noblock()

    def finish_in_flight(self, grace):
        """Let the handler threads finish, for up to ``grace`` seconds."""
        deadline = time.monotonic() + grace
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and thread.daemon:
                thread.join(max(0.0, deadline - time.monotonic()))


def cmd_runserver(args, settings):
    host, sep, port = args.addrport.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port)
    except ValueError:
        sys.exit("manage.py: invalid HOST:PORT %r" % (args.addrport,))

    # Fails here (before binding) if the virtualenv lacks the library.
    from sampleapp.wsgi import application

    server = ThreadingWSGIServer((host, port), WSGIRequestHandler)
    server.set_app(application)
    stopping = threading.Event()

    def stop(signum, frame):
        # A graceful stop. serve_forever() runs in this thread, so it is asked
        # to return from another one; an exception raised here could instead
        # drop a connection between its accept and its handler thread.
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print("Serving sampleapp (settings %s) on http://%s:%d/ (pid %d)"
          % (args.settings, host, server.server_port, os.getpid()),
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        # stop accepting (new connections are refused, so a proxy in front
        # retries them on another port), then let the requests in flight finish
        server.drain()
        server.server_close()
        server.finish_in_flight(STOP_GRACE)
        print("Server stopped", file=sys.stderr, flush=True)
    return 0


def cmd_fail(args, settings):
    print("manage.py fail: failing on purpose", file=sys.stderr)
    return 3


def cmd_showsettings(args, settings):
    print(json.dumps({
        "settings": args.settings,
        "greeting": getattr(settings, "GREETING", None),
    }, sort_keys=True))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="manage.py", description="Sample app management commands.")
    parser.add_argument(
        "--settings", metavar="MODULE", default=None,
        help="settings module (default: $DJANGO_SETTINGS_MODULE or %s)"
             % DEFAULT_SETTINGS)
    # Also accept --settings after the subcommand, like Django does.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", metavar="MODULE",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("syncdb", parents=[common],
                       help="create the sqlite database and its tables")
    p.set_defaults(func=cmd_syncdb)
    p = sub.add_parser("runserver", parents=[common],
                       help="serve the app over HTTP in the foreground")
    p.add_argument("addrport", metavar="HOST:PORT")
    p.set_defaults(func=cmd_runserver)
    p = sub.add_parser("fail", parents=[common],
                       help="print an error and exit with code 3")
    p.set_defaults(func=cmd_fail)
    p = sub.add_parser("showsettings", parents=[common],
                       help="print the settings module and GREETING as JSON")
    p.set_defaults(func=cmd_showsettings)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.settings = (args.settings
                     or os.environ.get("DJANGO_SETTINGS_MODULE")
                     or DEFAULT_SETTINGS)
    settings = load_settings(args.settings)
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
