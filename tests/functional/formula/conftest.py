"""What the SLS tests share: a real PostgreSQL of each test module's own."""

import pytest

from support.postgres import Postgres


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the module's own (Debian's binaries, a loopback port), removed after."""
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.remove()
