"""
How the privilege tests read strace's output (tests/support/privileges.py):
a file of the tree opened by root counts, a folder listed does not, and nothing a
process did after it dropped to the user (or its children) counts.
"""

from support.privileges import root_calls_in

TREE = "/srv/vumi/staging"

TRACE = f"""\
100   openat(AT_FDCWD</work>, "{TREE}/releases/20260101_000000/release.json", O_RDONLY|O_CLOEXEC) = 5</x>
100   openat(AT_FDCWD</work>, "{TREE}/releases", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = 6</x>
100   openat(7<{TREE}/releases>, "release.json", O_RDONLY) = 8</x>
100   openat(AT_FDCWD</work>, "{TREE}/LOCKED", O_RDONLY|O_NOFOLLOW) = -1 ENOENT (No such file or directory)
100   openat(AT_FDCWD</work>, "{TREE}/history.log", O_WRONLY|O_APPEND|O_CREAT, 0640) = 9</x>
100   openat(AT_FDCWD</work>, "/srv/vumi/.logs/staging/webapp.8000.log", O_RDONLY) = 10</x>
100   clone3({{flags=CLONE_VM}}, 88) = 200
200   setuid(998) = 0
200   openat(AT_FDCWD</work>, "{TREE}/releases/20260101_000000/release.json", O_RDONLY) = 3</x>
200   clone(child_stack=NULL, flags=SIGCHLD) = 300
300   openat(AT_FDCWD</work>, "{TREE}/history.log", O_WRONLY|O_APPEND) = 3</x>
"""


def test_root_reads_and_writes_in_the_tree_are_counted_its_childs_are_not():
    found = root_calls_in(TRACE, TREE)
    assert [line.split('"')[1] for line in found["reads"]] == [
        f"{TREE}/releases/20260101_000000/release.json",  # a file of the tree: a read
        "release.json",  # relative to a descriptor of the tree
        f"{TREE}/LOCKED",  # tried, even if it was not there
    ]
    assert [line.split('"')[1] for line in found["writes"]] == [f"{TREE}/history.log"]


def test_a_clean_trace_has_nothing():
    clean = "\n".join(line for line in TRACE.splitlines() if line.startswith(("200", "300")) or "O_DIRECTORY" in line)
    assert root_calls_in(clean, TREE) == {"reads": [], "writes": []}
