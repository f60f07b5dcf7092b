"""I-BERT's integer-only modules (`modules`), their torch custom ops (`ops`) and calibration (`calibration`).

The arithmetic they implement is specified, with its NumPy int64 reference, in `trt_runtime.contract.ibert`.
"""

from models.quantization.integer.modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
)

__all__ = ["IntGELU", "IntLayerNorm", "IntSoftmax", "QuantAct", "QuantEmbedding", "QuantLinear"]
