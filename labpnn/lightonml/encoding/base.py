"""lightonml.encoding.base: the encoders and decoders, as lightonml 1.4 names them
(implemented in labpnn.units.opu_encoding)."""

from labpnn.units.opu_encoding import (
    BaseTransformer,
    BinaryThresholdEncoder,
    ConcatenatedBitPlanEncoder,
    ConcatenatedFloat32Encoder,
    ConcatenatingBitPlanDecoder,
    Float32Encoder,
    MultiThresholdEncoder,
    NoDecoding,
    NoEncoding,
    SeparatedBitPlanDecoder,
    SeparatedBitPlanEncoder,
    SequentialBaseTwoEncoder,
)

__all__ = ["BaseTransformer", "BinaryThresholdEncoder", "ConcatenatedBitPlanEncoder",
           "ConcatenatedFloat32Encoder", "ConcatenatingBitPlanDecoder", "Float32Encoder",
           "MultiThresholdEncoder", "NoDecoding", "NoEncoding", "SeparatedBitPlanDecoder",
           "SeparatedBitPlanEncoder", "SequentialBaseTwoEncoder"]
