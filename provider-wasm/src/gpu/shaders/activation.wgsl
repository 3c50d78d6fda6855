// The activation fused into a kernel's epilogue, chosen by the override ACT: 0 linear, 1 relu,
// 2 sigmoid, 3 tanh. Prepended to the kernels that use it.

override ACT: u32 = 0u;

fn activate(x: f32) -> f32 {
    switch ACT {
        case 1u: { return max(x, 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-x)); }
        case 3u: { return tanh(x); }
        default: { return x; }
    }
}
