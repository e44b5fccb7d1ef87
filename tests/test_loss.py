from __future__ import annotations

import pytest
import torch

from xclip_lightning.loss import symmetric_infonce


def test_symmetric_infonce_is_the_mean_of_both_directions():
    torch.manual_seed(0)
    logits = torch.randn(5, 5, dtype=torch.float64) * 10
    t2v = -logits.log_softmax(1).diagonal().mean()
    v2t = -logits.log_softmax(0).diagonal().mean()
    torch.testing.assert_close(symmetric_infonce(logits), (t2v + v2t) / 2)


def test_symmetric_infonce_needs_a_square_matrix():
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(torch.zeros(3, 4))
