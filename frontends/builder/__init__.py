"""The Python builder: meshir modules from Python, with layer helpers."""
from .builder import (
    FunctionBuilder, ModuleBuilder, Tensor, TypeFactory, bf16, bool_, dims, f16, f32, f64, i8, i32, i64, to_attribute, u8, u32,
)
from .layers import dense, feed_forward, layer_norm, multi_head_attention
from .pipeline import pipelined

__all__ = [
    "FunctionBuilder", "ModuleBuilder", "Tensor", "TypeFactory", "bf16", "bool_", "dense", "dims", "f16", "f32", "f64",
    "feed_forward", "i8", "i32", "i64", "layer_norm", "multi_head_attention", "pipelined", "to_attribute", "u8", "u32",
]
