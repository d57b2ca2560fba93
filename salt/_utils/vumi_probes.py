"""
Probes of a port on the host, as root may make them: no file of the deploy user's read,
each bounded by its timeout. The bottom layer: the standard library only.
"""

import http.client
import socket


def port_open(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def answers(host, port, timeout=2.0):
    """Whether ``GET /`` on the port gets an HTTP answer below 500 (the default probe's rule), quickly."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"User-Agent": "vumi-salt status"})
        return conn.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
