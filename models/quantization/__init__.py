"""QDQBERT's fake-quantization toolkit (pytorch-quantization's concepts and names) and calibration.

    import models
    from models.quantization import calibrate, keep_float, save_calibration
    from models.data import calibration_batches, load_texts

    model = models.load("ckpt_dir", quantization="qdq")              # QuantLinear / TensorQuantizer sites
    keep_float(model, ["softmax-output"])                             # optional: sensitive sites stay float
    calibrate(model, calibration_batches(load_texts(), "ckpt_dir"), method="percentile")
    save_calibration(model, "calibration.json")                       # models.load(..., calibration=...) reads it

I-BERT's integer-only modules (`integer*` here) are separate; they share `load_quantization_state`, the
one entry point for quantization state found in checkpoints, and calibration.json's envelope
(`load_calibration` applies a file of either mode):

    model = models.load("ckpt_dir", quantization="integer")
    calibrate_integer(model, calibration_batches(load_texts(), "ckpt_dir"))   # method="minmax"
    save_integer_calibration(model, "calibration.json")    # models.load(..., calibration=...) reads it
"""

from models.quantization.calibration_file import (
    CalibrationError,
    load_calibration,
    read_calibration,
    save_calibration,
)
from models.quantization.integer.calibration import (
    calibrate_integer,
    load_integer_calibration,
    save_integer_calibration,
)
from models.quantization.qdq.calibrate import calibrate, collect_stats, compute_amax, finish_calibration
from models.quantization.qdq.calibrators import HistogramCalibrator, MaxCalibrator
from models.quantization.qdq.descriptor import (
    QUANT_DESC_8BIT_PER_CHANNEL_AXIS0,
    QUANT_DESC_8BIT_PER_TENSOR,
    QuantDescriptor,
)
from models.quantization.qdq.nn import QuantConv1d, QuantLinear
from models.quantization.qdq.quantized_model import (
    SENSITIVE_SITES,
    check_calibrated,
    keep_float,
    load_quantization_state,
    named_quantizers,
    set_quantization,
    uncalibrated_quantizers,
)
from models.quantization.qdq.tensor_quantizer import NotCalibratedError, TensorQuantizer
from trt_runtime.contract import compat as _compat

_compat.install()  # the previous release's module names keep importing, with a DeprecationWarning

__all__ = [
    "QUANT_DESC_8BIT_PER_CHANNEL_AXIS0",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "SENSITIVE_SITES",
    "CalibrationError",
    "HistogramCalibrator",
    "MaxCalibrator",
    "NotCalibratedError",
    "QuantConv1d",
    "QuantDescriptor",
    "QuantLinear",
    "TensorQuantizer",
    "calibrate",
    "calibrate_integer",
    "check_calibrated",
    "collect_stats",
    "compute_amax",
    "finish_calibration",
    "keep_float",
    "load_calibration",
    "load_integer_calibration",
    "load_quantization_state",
    "named_quantizers",
    "read_calibration",
    "save_calibration",
    "save_integer_calibration",
    "set_quantization",
    "uncalibrated_quantizers",
]
