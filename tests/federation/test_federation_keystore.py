"""A data owner's key store: the study's CKKS secret context, installed once, loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cohort.crypto.ckks import CkksSecretContext
from cohort.errors import BadInputError, VerificationError
from cohort.federation.keystore import KeyStore

STUDY = "ab" * 32


def test_a_process_loads_an_installed_context_once_and_a_replaced_file_again(
    tmp_path: Path,
) -> None:
    store = KeyStore(tmp_path / "keystore", "hospital-1")
    with pytest.raises(BadInputError, match="no CKKS secret context"):
        store.load_ckks(STUDY)
    first = CkksSecretContext.generate()
    assert store.install_ckks(STUDY, first)
    loaded = store.load_ckks(STUDY)
    assert KeyStore(tmp_path / "keystore", "hospital-1").load_ckks(STUDY) is loaded
    vector = np.linspace(-0.5, 0.5, 64)
    grid = loaded.params.release_grid
    np.testing.assert_allclose(loaded.decrypt(first.encrypt(vector)), vector, atol=grid * 4)
    # installing a different context is refused and changes nothing
    second = CkksSecretContext.generate()
    with pytest.raises(VerificationError, match="already installed"):
        store.install_ckks(STUDY, second)
    assert store.load_ckks(STUDY) is loaded
    # a file replaced behind the process's back (an operator's restore) is read again
    path = store.ckks_path(STUDY)
    os.unlink(path)
    assert store.install_ckks(STUDY, second)
    again = store.load_ckks(STUDY)
    assert again is not loaded
    assert again.public().fingerprint() == second.public().fingerprint()
    os.unlink(path)
    with pytest.raises(BadInputError, match="no CKKS secret context"):
        store.load_ckks(STUDY)
