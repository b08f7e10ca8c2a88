from .interface import (CONTROLS, FULL_PRECISION, METHODS, NEEDS_CALIBRATION, QUANTIZERS, QuantResult, Quantizer,
                        quant_config, quantize)

__all__ = ["CONTROLS", "FULL_PRECISION", "METHODS", "NEEDS_CALIBRATION", "QUANTIZERS", "QuantResult", "Quantizer",
           "quant_config", "quantize"]
