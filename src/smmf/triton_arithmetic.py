"""Element-wise arithmetic of pass 1 (:mod:`smmf.triton_tile`, :mod:`smmf.triton_dense`): division,
rounding to the parameter's dtype, the random bits of stochastic rounding, and the parameter's update
written, each as the compiled kernels and Triton's interpreter (CPU tensors, the tests) can both run it."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _mix(x):
    """The 31-bit integer hash of smmf.rounding, on uint32: the products wrap modulo 2^32, and only
    their low 31 bits are kept, as with the int64 arithmetic there."""
    x = x & 0x7FFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0x7FFFFFFF
    return x ^ (x >> 16)


# Whether the kernels are compiled (False under Triton's interpreter, which has no libdevice and whose
# cast to bf16 truncates): compiled, pass 1 divides and rounds to bf16 with single instructions.
_COMPILED = tl.constexpr(not isinstance(_mix, InterpretedFunction))


@triton.jit
def stream_key(seed, step):
    """The part of smmf.rounding's hash mix(index ^ mix(seed ^ mix(step))) that is the same for every
    element of a tensor in a step (only the low 31 bits of seed and step count there)."""
    return _mix((seed & 0x7FFFFFFF).to(tl.uint32) ^ _mix((step & 0x7FFFFFFF).to(tl.uint32)))


@triton.jit
def random_bits(key, index):
    """The element's random bits from the tensor's key and the low 32 bits of its index (uint32)."""
    return _mix(index ^ key)


@triton.jit
def stochastic_bf16(x, bits):
    """float32 x to bfloat16, rounded away from zero with probability (dropped bits) / 2^16, as
    smmf.rounding.stochastic_round_bf16 does; the cast at the end is exact."""
    kept = (x.to(tl.uint32, bitcast=True) + (bits & 0xFFFF)) & 0xFFFF0000
    return tl.where(x != x, x, kept.to(tl.float32, bitcast=True)).to(tl.bfloat16)


@triton.jit
def divided(x, magic, shift):
    """x // d for 0 <= x < 2**31, given d's magic multiplier and shift (Granlund and Montgomery's division
    by an invariant integer: smmf.placement.divisor_magic), in a multiply and two shifts where an
    integer division takes some twenty instructions."""
    return (tl.umulhi(x.to(tl.uint32) << 1, magic) >> shift).to(tl.int32)


@triton.jit
def quotient(x, y):
    """x / y. Compiled in float32, the approximate division (2 ulp, as the div.full.f32 that ``/`` gives,
    without its range checks: |y| = sqrt(V) + eps lies well inside its 2^-126..2^126 range); else ``/``."""
    if _COMPILED and x.dtype == tl.float32:
        return libdevice.fast_dividef(x, y)
    else:
        return x / y


@triton.jit
def to_param_dtype(x, P_DT: tl.constexpr):
    """x in the parameter's dtype, rounded to nearest even: by the cast when compiled; by hand for bf16
    under the interpreter, whose cast to bf16 truncates (the cast after it is then exact)."""
    if P_DT == tl.bfloat16 and not _COMPILED:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))
    return x.to(P_DT)


@triton.jit
def store_param(p_at, ok, p, mom, v, lr, eps, key, base, offs, P_DT: tl.constexpr, STOCHASTIC: tl.constexpr):
    """p - lr * M / (sqrt(V) + eps) (0 where the denominator is 0) written at ``p_at`` in the parameter's
    dtype: bf16 rounded stochastically with bits drawn for the element's row-major index in its tensor
    (``base + offs``, wherever memory holds it), or to nearest."""
    denom = tl.sqrt(v) + eps
    new_p = p - lr * tl.where(denom > 0, quotient(mom, tl.where(denom > 0, denom, 1.0)), 0.0)
    if STOCHASTIC:
        index = base.to(tl.uint32) + offs.to(tl.uint32)  # the low 32 bits of the element's index
        bits = random_bits(key, index)
        tl.store(p_at, stochastic_bf16(new_p.to(tl.float32), bits), mask=ok)
    else:
        tl.store(p_at, to_param_dtype(new_p, P_DT), mask=ok)
