"""Regional torch.compile of the Wan transformer block."""

from .regional import CompileConfig, compile_blocks, uncompile_blocks

__all__ = ["CompileConfig", "compile_blocks", "uncompile_blocks"]
