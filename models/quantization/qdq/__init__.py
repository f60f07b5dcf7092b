"""QDQBERT's fake-quantization toolkit, with NVIDIA pytorch-quantization's concepts and names.

`descriptor` (QuantDescriptor), `tensor_quantizer` (TensorQuantizer), `calibrators` (max and histogram),
`nn` (QuantLinear, QuantConv1d), `quantized_model` (the quantizer sites of a model, keep_float) and
`calibrate` (post-training calibration). `models.quantization` re-exports the public names.
"""
