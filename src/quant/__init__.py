from .interface import CONTROLS, FULL_PRECISION, METHODS, NEEDS_CALIBRATION, QUANTIZERS, QuantResult, Quantizer, quantize

__all__ = ["CONTROLS", "FULL_PRECISION", "METHODS", "NEEDS_CALIBRATION", "QUANTIZERS", "QuantResult", "Quantizer",
           "quantize"]
