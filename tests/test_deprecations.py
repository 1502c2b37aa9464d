"""Deprecated names keep working, with a FutureWarning that names the replacement."""

from __future__ import annotations

import numpy as np
import pytest

from ginseng.model import GinsengModelState


@pytest.mark.parametrize(("old", "new"), [("gene_names", "genes"), ("label_names", "labels")])
def test_model_state_name_aliases_warn_and_return_the_field(old, new):
    state = GinsengModelState(params={}, config={}, genes=["g1", "g2"], labels=["a", "b", "c"])
    with pytest.warns(FutureWarning, match=rf"GinsengModelState\.{old} .*use \.{new}") as record:
        value = getattr(state, old)
    np.testing.assert_array_equal(value, getattr(state, new))
    # The warning points at the caller's line, not at ginseng.
    assert record[0].filename == __file__
