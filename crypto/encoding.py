"""Fixed-point encoding of model updates before encryption.

Data owners round each weighted update to the CKKS release grid (``params.release_grid``,
2**-16 with the default parameters) before encrypting it. The homomorphic sum of grid
values is again on the grid, and decryption rounds onto that grid, which removes the CKKS
approximation noise entirely while it stays under half a step. The decrypted sum is then
*exactly* the sum of the quantised updates: every run under one seed gives a bit-identical
model, the plaintext comparison mode (``--secure none``) gives the same model as CKKS, and
the aggregate can be checked against a plaintext oracle with ``==``.

Owners weight their update by ``examples / weight_unit`` where ``weight_unit`` is the largest
enrolled owner's example count, so every weight is at most 1 and encoded values stay within
the update's own magnitude, far inside ``params.max_abs``. The rounding error is at most half
a grid step (7.6e-6) per value and owner; the coordinator divides the sum by the weight of the
client set (at least 1), so the released mean's error stays near the grid step whatever the
number of owners.
"""

from __future__ import annotations

import numpy as np

from cohort.errors import BadInputError


def quantize(values: np.ndarray, *, grid: float) -> np.ndarray:
    """Round ``values`` to multiples of ``grid`` (float64). Run by a data owner."""
    if not (grid > 0 and np.isfinite(grid)):
        raise BadInputError(f"grid must be a positive step (value units), got {grid}")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise BadInputError(f"update must be a 1-D vector, got shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        raise BadInputError(
            f"update value at index {int(np.flatnonzero(~finite)[0])} is not finite"
        )
    return np.round(array / grid) * grid
