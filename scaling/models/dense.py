"""Dense layers whose weight gradient is a row-major matmul on CPU (a custom VJP).

`Dense` has nn.Dense's parameters and math; on CPU its weight gradient goes through
`dense_rowmajor`, which XLA's CPU backend runs on its fast matmul kernel (3-4x faster than
the transpose JAX derives). `matmul_rowmajor` is the same for a bare [..., I] x [I, O].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.models import platform


def _transposed(x_MxN):
    """x^T as its own array: barriers keep XLA from folding the transpose into a dot
    (which would take the slow path again) or fusing it with x's producer (a transpose
    fused with arithmetic is emitted as a strided loop, ~10x slower than a plain one)."""
    opt = jax.lax.optimization_barrier
    return opt(opt(x_MxN).T)


def _varying_like(w, x):
    """w marked as varying over the manual (shard_map) axes x varies over. A custom VJP must
    return cotangents typed like its inputs, so the replicated weight enters it already
    varying; the reduction of its gradient over devices then happens where it does for a
    plain matmul (the transpose of this cast). A no-op outside shard_map."""
    missing = tuple(sorted(_varying_axes(x) - _varying_axes(w)))
    return jax.lax.pcast(w, missing, to="varying") if missing else w


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX 0.10; earlier releases: .vma
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


@jax.custom_vjp
def dense_rowmajor(x_MxI, kernel_IxO):
    """x @ kernel for a [M, I] matrix of rows, whose weight gradient is a row-major matmul
    (the transformer's dense layers use it on CPU).

    JAX's own transpose of the forward dot asks for dW = x^T dy as a dot contracting
    both operands' row axis M. Inside a training step XLA's CPU backend then lays dy out
    transposed and runs that dot on its generic (Eigen) path, 3-4x slower than the
    forward matmul (measured: 59 vs 218 GFLOP/s for [1024, 80] x [80, 320] on one core).
    Here x^T is made explicit behind an optimization barrier, so the weight gradient is
    the plain [I, M] x [M, O] product XLA hands to its fast (YNNPACK) kernel. The input
    gradient dy kernel^T is left to XLA, which already runs it fast.
    """
    return x_MxI @ kernel_IxO


def _dense_fwd(x_MxI, kernel_IxO):
    return x_MxI @ kernel_IxO, (x_MxI, kernel_IxO)


def _dense_bwd(res, dy_MxO):
    x_MxI, kernel_IxO = res
    dx_MxI = jax.lax.dot_general(dy_MxO, kernel_IxO, (((1,), (1,)), ((), ())))
    I, O = kernel_IxO.shape
    if I <= O:  # transpose the narrower of x and dy
        dk_IxO = _transposed(x_MxI) @ dy_MxO
    else:
        dk_IxO = jax.lax.optimization_barrier(_transposed(dy_MxO) @ x_MxI).T
    return dx_MxI.astype(x_MxI.dtype), dk_IxO.astype(kernel_IxO.dtype)


dense_rowmajor.defvjp(_dense_fwd, _dense_bwd)


def matmul_rowmajor(x_xI, kernel_IxO):
    """x [..., I] @ kernel [I, O] through `dense_rowmajor` (rows flattened, the kernel made
    varying like x under shard_map)."""
    y_MxO = dense_rowmajor(x_xI.reshape(-1, x_xI.shape[-1]), _varying_like(kernel_IxO, x_xI))
    return y_MxO.reshape(*x_xI.shape[:-1], kernel_IxO.shape[-1])


class Dense(nn.Module):
    """nn.Dense's parameters and math (kernel [I, O], bias [O], computed in `dtype`), with
    `dense_rowmajor`'s weight gradient on CPU (`rowmajor_grad` None: on CPU only)."""

    features: int
    kernel_init: object = nn.initializers.lecun_normal()
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32
    rowmajor_grad: bool | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        rowmajor = self.rowmajor_grad
        if rowmajor is None:
            rowmajor = platform.backend() == "cpu"
        if not rowmajor:
            return jnp.einsum("...i,io->...o", x, kernel) + bias
        return matmul_rowmajor(x, kernel) + bias
