"""How a moment is stored: a dtype (`DtypeStorage`, stochastic bfloat16) or low-bit blocks
(`QuantizedBuffer`, `blockwise_8bit`, ...). Imports only `adamx.core`.
"""

from ._quantize import Blockwise as Blockwise
from ._quantize import QuantizedBuffer as QuantizedBuffer
from ._quantize import Rank1 as Rank1
from ._quantize import RoundedBuffer as RoundedBuffer
from ._quantize import StochasticBfloat16 as StochasticBfloat16
from ._quantize import blockwise_4bit as blockwise_4bit
from ._quantize import blockwise_8bit as blockwise_8bit
from ._quantize import low_bit_moments as low_bit_moments
from ._quantize import rank1_4bit as rank1_4bit
from ._quantize import stochastic_bfloat16 as stochastic_bfloat16
from ._storage import DtypeStorage as DtypeStorage
from ._storage import FilledStorage as FilledStorage
from ._storage import MomentStorage as MomentStorage

__all__ = [
    "Blockwise",
    "DtypeStorage",
    "FilledStorage",
    "MomentStorage",
    "QuantizedBuffer",
    "Rank1",
    "RoundedBuffer",
    "StochasticBfloat16",
    "blockwise_4bit",
    "blockwise_8bit",
    "low_bit_moments",
    "rank1_4bit",
    "stochastic_bfloat16",
]
