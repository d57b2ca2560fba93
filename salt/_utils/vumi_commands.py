"""
Shell lines of the operator (``execute``, ``managepy``) and of pillar (hooks), run
in a release as the deploy user with the release's environment, keeping at most
``OUTPUT_LIMIT`` bytes of each of stdout and stderr (the first and the last
parts, which say what ran and how it ended) however much the command prints.
"""

import os
import pwd
import selectors
import subprocess

#: bytes of stdout, and as many of stderr, that a result keeps
OUTPUT_LIMIT = 1 << 20
_HEAD = 64 << 10


class _Kept:
    """The head and the tail of a stream, and how much of it there was."""

    def __init__(self, limit):
        self.head, self.tail, self.total, self.limit = bytearray(), bytearray(), 0, limit

    def add(self, chunk):
        self.total += len(chunk)
        room = _HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > self.limit - _HEAD:
            del self.tail[: len(self.tail) - (self.limit - _HEAD)]

    def text(self):
        kept = len(self.head) + len(self.tail)
        middle = f"\n[... {self.total - kept} bytes left out ...]\n".encode() if self.total > kept else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace").rstrip("\n")


def run_shell(line, cwd, runas, env, limit=OUTPUT_LIMIT):
    """
    Run shell ``line`` (as ``runas``, a user name, or as Salt's own user when None):
    Salt's ``cmd.run_all`` result shape, with ``truncated`` listing the streams cut.
    """
    user = pwd.getpwnam(runas) if runas else None
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        ["/bin/sh", "-c", line], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if user else None,
    )  # fmt: skip
    kept = {proc.stdout: _Kept(limit), proc.stderr: _Kept(limit)}
    with selectors.DefaultSelector() as selector:
        for stream in kept:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if chunk:
                    kept[key.fileobj].add(chunk)
                else:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
    retcode = proc.wait()
    out, err = kept[proc.stdout], kept[proc.stderr]
    return {
        "retcode": retcode,
        "stdout": out.text(),
        "stderr": err.text(),
        "truncated": [name for name, k in (("stdout", out), ("stderr", err)) if k.total > k.limit],
    }
