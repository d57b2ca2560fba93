"""A tiny pure-Python library the sample app depends on.

It is shipped to the app as a wheel inside the app's repository
(``wheels/``) so that ``pip install -r config/requirements.pip`` works
without any network access.
"""

VERSION = "1.0"


def greet(name):
    """Return a friendly greeting for ``name``."""
    return "hello, %s" % (name,)
