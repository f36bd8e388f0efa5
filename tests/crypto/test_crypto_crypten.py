"""CrypTen installs beside the other seven packages and imports on torch 2.x."""

from __future__ import annotations

import torch

from cohort.crypto.crypten_compat import load_crypten


def test_crypten_imports_and_shares_a_tensor_in_one_party() -> None:
    crypten = load_crypten()
    crypten.init()
    try:
        secret = torch.tensor([1.5, -2.25, 3.0])
        shared = crypten.cryptensor(secret)
        # One party holds all shares here; the arithmetic is CrypTen's fixed-point ring.
        total = (shared + shared).get_plain_text()
        torch.testing.assert_close(total, secret * 2, atol=1e-3, rtol=0)
    finally:
        crypten.uninit()
