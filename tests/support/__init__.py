"""What the tests share: one module per concern (``host``: the guard of the host)."""
