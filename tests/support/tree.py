"""What a test reads of an environment's tree, as an operator would: its history log."""

import json
import pathlib


def history(root):
    """Every line of ``<root>/history.log`` (an environment's folder), oldest first; [] when there is none."""
    path = pathlib.Path(root) / "history.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
