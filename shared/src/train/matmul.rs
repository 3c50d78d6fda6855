//! Matrix products of the reference trainer through the `gemm` crate, which picks the widest SIMD kernels
//! the CPU has (AVX-512 where present) at run time, and plain code on wasm32.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::Real;

/// `c = a * b` for any strides (transposed views included).
///
/// # Panics
/// When the shapes do not agree.
pub fn mat_mul<A: Real>(a: &ArrayView2<'_, A>, b: &ArrayView2<'_, A>, c: &mut ArrayViewMut2<'_, A>) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert!(k == k2 && c.dim() == (m, n), "matmul shapes {:?} x {:?} -> {:?}", a.dim(), b.dim(), c.dim());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(A::zero());
        return;
    }
    let [a_rs, a_cs] = [a.strides()[0], a.strides()[1]];
    let [b_rs, b_cs] = [b.strides()[0], b.strides()[1]];
    let [c_rs, c_cs] = [c.strides()[0], c.strides()[1]];
    let (a_ptr, b_ptr, c_ptr) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: the pointers and element strides come from live ndarray views whose shapes were checked above
    // to be m x k, k x n and m x n, so every element gemm touches lies inside them; `c` is borrowed
    // mutably and cannot alias `a` or `b`. With `read_dst = false` gemm only writes `c`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c_ptr,
            c_cs,
            c_rs,
            false,
            a_ptr,
            a_cs,
            a_rs,
            b_ptr,
            b_cs,
            b_rs,
            A::zero(),
            A::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
