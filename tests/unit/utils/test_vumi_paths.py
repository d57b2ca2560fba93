"""``salt/_utils/vumi_paths.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import pytest
from salt.exceptions import SaltInvocationError


def test_paths_are_computed_in_one_place(paths, tmp_path):
    assert paths.root == str(tmp_path / "srv" / "vumi" / "staging")
    assert paths.tree()[0] == paths.root and paths.uv_cache in paths.tree()
    assert paths.code("20261201_120000").endswith("releases/20261201_120000/vumi")
    with pytest.raises(SaltInvocationError, match="invalid release"):
        paths.release("../../etc")
