// Sliding-window kernels over channels-last [batch, h, w, c] tensors, chosen by OP:
//   0 im2col:       cols[(b, oy, ox), (ky, kx, ci)] = x[b, oy*sh + ky - pad_top, ox*sw + kx - pad_left, ci] or 0
//   1 col2im:       dx[b, y, x, ci] = sum of dcols over every (oy, ox, ky, kx) that read it (a gather: no atomics)
//   2 max pool:     out = max over the window; arg[b, oy, ox, c] = the flat (y * in_w + x) of the maximum
//   3 avg pool:     out = mean over the window
//   4 max pool bwd: dx[b, y, x, c] = sum of dout over the windows whose maximum it was
//   5 avg pool bwd: dx = sum of dout / (kh * kw) over the windows containing it
// Pooling uses no padding. One thread per output element (0, 2, 3) or per input element (1, 4, 5).

struct Geometry {
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    s_h: u32,
    s_w: u32,
    pad_top: u32,
    pad_left: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> arg: array<u32>;

fn windows_covering(pos: u32, pad: u32, k: u32, s: u32, out_n: u32) -> vec2<u32> {
    // Output positions o with o*s <= pos + pad < o*s + k, i.e. o in [ceil((pos + pad - k + 1) / s), (pos + pad) / s].
    let p = pos + pad;
    var lo = 0u;
    if p + 1u > k {
        lo = (p + 1u - k + s - 1u) / s;
    }
    let hi = min(p / s, out_n - 1u);
    return vec2<u32>(lo, hi);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    switch OP {
        case 0u: {
            let kkc = g.k_h * g.k_w * g.in_c;
            if i >= g.batch * g.out_h * g.out_w * kkc {
                return;
            }
            let col = i % kkc;
            let row = i / kkc;
            let ci = col % g.in_c;
            let kx = (col / g.in_c) % g.k_w;
            let ky = col / (g.in_c * g.k_w);
            let ox = row % g.out_w;
            let oy = (row / g.out_w) % g.out_h;
            let b = row / (g.out_w * g.out_h);
            let y = i32(oy * g.s_h + ky) - i32(g.pad_top);
            let x = i32(ox * g.s_w + kx) - i32(g.pad_left);
            var v = 0.0;
            if y >= 0 && x >= 0 && u32(y) < g.in_h && u32(x) < g.in_w {
                v = src[((b * g.in_h + u32(y)) * g.in_w + u32(x)) * g.in_c + ci];
            }
            dst[i] = v;
        }
        case 1u: {
            if i >= g.batch * g.in_h * g.in_w * g.in_c {
                return;
            }
            let ci = i % g.in_c;
            let x = (i / g.in_c) % g.in_w;
            let y = (i / (g.in_c * g.in_w)) % g.in_h;
            let b = i / (g.in_c * g.in_w * g.in_h);
            let ry = windows_covering(y, g.pad_top, g.k_h, g.s_h, g.out_h);
            let rx = windows_covering(x, g.pad_left, g.k_w, g.s_w, g.out_w);
            let kkc = g.k_h * g.k_w * g.in_c;
            var s = 0.0;
            for (var oy = ry.x; oy <= ry.y; oy++) {
                let ky = y + g.pad_top - oy * g.s_h;
                for (var ox = rx.x; ox <= rx.y; ox++) {
                    let kx = x + g.pad_left - ox * g.s_w;
                    s += src[((b * g.out_h + oy) * g.out_w + ox) * kkc + (ky * g.k_w + kx) * g.in_c + ci];
                }
            }
            dst[i] = s;
        }
        case 2u, 3u: {
            if i >= g.batch * g.out_h * g.out_w * g.in_c {
                return;
            }
            let c = i % g.in_c;
            let ox = (i / g.in_c) % g.out_w;
            let oy = (i / (g.in_c * g.out_w)) % g.out_h;
            let b = i / (g.in_c * g.out_w * g.out_h);
            // Start from the window's first element, so that the position is always inside the window.
            let y0 = oy * g.s_h;
            let x0 = ox * g.s_w;
            var best = src[((b * g.in_h + y0) * g.in_w + x0) * g.in_c + c];
            var best_at = y0 * g.in_w + x0;
            var sum = 0.0;
            for (var ky = 0u; ky < g.k_h; ky++) {
                for (var kx = 0u; kx < g.k_w; kx++) {
                    let y = oy * g.s_h + ky;
                    let x = ox * g.s_w + kx;
                    let v = src[((b * g.in_h + y) * g.in_w + x) * g.in_c + c];
                    sum += v;
                    if v > best {
                        best = v;
                        best_at = y * g.in_w + x;
                    }
                }
            }
            if OP == 2u {
                dst[i] = best;
                arg[i] = best_at;
            } else {
                dst[i] = sum / f32(g.k_h * g.k_w);
            }
        }
        default: {
            if i >= g.batch * g.in_h * g.in_w * g.in_c {
                return;
            }
            let c = i % g.in_c;
            let x = (i / g.in_c) % g.in_w;
            let y = (i / (g.in_c * g.in_w)) % g.in_h;
            let b = i / (g.in_c * g.in_w * g.in_h);
            let ry = windows_covering(y, 0u, g.k_h, g.s_h, g.out_h);
            let rx = windows_covering(x, 0u, g.k_w, g.s_w, g.out_w);
            var s = 0.0;
            for (var oy = ry.x; oy <= ry.y; oy++) {
                for (var ox = rx.x; ox <= rx.y; ox++) {
                    let o = ((b * g.out_h + oy) * g.out_w + ox) * g.in_c + c;
                    if OP == 4u {
                        if arg[o] == y * g.in_w + x {
                            s += src[o];
                        }
                    } else {
                        s += src[o];
                    }
                }
            }
            if OP == 5u {
                s /= f32(g.k_h * g.k_w);
            }
            dst[i] = s;
        }
    }
}
