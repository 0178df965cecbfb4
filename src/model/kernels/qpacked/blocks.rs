//! The GGML block types decoded: each block's quants as `i8`, its scales and minimums as f32.

use candle_core::quantized::GgmlDType;

/// IEEE half to single precision (exact).
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let shift = f.leading_zeros() - 21;
            let f = (f << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (f << 13)
        }
        (31, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// A K type's 6-bit scale and minimum of sub-block `j` (0..8) from its 12 packed bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4)) as f32, ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32)
    }
}

/// The block types this module decodes: (elements per block, bytes per block, group).
pub(super) fn layout(dtype: GgmlDType) -> Option<(usize, usize, usize)> {
    Some(match dtype {
        GgmlDType::Q4_0 => (32, 18, 32),
        GgmlDType::Q4_1 => (32, 20, 32),
        GgmlDType::Q5_0 => (32, 22, 32),
        GgmlDType::Q5_1 => (32, 24, 32),
        GgmlDType::Q8_0 => (32, 34, 32),
        GgmlDType::Q4K => (256, 144, 32),
        GgmlDType::Q5K => (256, 176, 32),
        GgmlDType::Q6K => (256, 210, 16),
        _ => return None,
    })
}

/// Decodes one block of `dtype` into quants `q` (one per element), and a scale and minimum per
/// group (`d`, `m`), with `w = d·q + m`.
pub(super) fn decode_block(dtype: GgmlDType, b: &[u8], q: &mut [i8], d: &mut [f32], m: &mut [f32]) {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let (body, bias) = if dtype == GgmlDType::Q4_0 { (2, 8) } else { (4, 0) };
            d[0] = half(b, 0);
            m[0] = if dtype == GgmlDType::Q4_1 { half(b, 2) } else { 0.0 };
            for j in 0..16 {
                q[j] = (b[body + j] & 0xf) as i8 - bias;
                q[j + 16] = (b[body + j] >> 4) as i8 - bias;
            }
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let one = dtype == GgmlDType::Q5_1;
            let (hi, body, bias) = if one { (4, 8, 0) } else { (2, 6, 16) };
            d[0] = half(b, 0);
            m[0] = if one { half(b, 2) } else { 0.0 };
            let qh = u32::from_le_bytes([b[hi], b[hi + 1], b[hi + 2], b[hi + 3]]);
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = ((b[body + j] & 0xf) | h0) as i8 - bias;
                q[j + 16] = ((b[body + j] >> 4) | h1) as i8 - bias;
            }
        }
        GgmlDType::Q8_0 => {
            d[0] = half(b, 0);
            m[0] = 0.0;
            for j in 0..32 {
                q[j] = b[2 + j] as i8;
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let five = dtype == GgmlDType::Q5K;
            let (dd, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            for chunk in 0..4 {
                let ql = &qs[chunk * 32..][..32];
                for half_ in 0..2 {
                    let sub = chunk * 2 + half_;
                    let (sc, mn) = scale_min_k4(sub, scales);
                    d[sub] = dd * sc;
                    m[sub] = -(dmin * mn);
                    for l in 0..32 {
                        let low = if half_ == 0 { ql[l] & 0xf } else { ql[l] >> 4 };
                        let high = if five && qh[l] & (1 << sub) != 0 { 16 } else { 0 };
                        q[sub * 32 + l] = (low + high) as i8;
                    }
                }
            }
        }
        GgmlDType::Q6K => {
            let (ql_all, qh_all, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let dd = half(b, 208);
            for (g, (dst, s)) in d.iter_mut().zip(sc).enumerate() {
                *dst = dd * (*s as i8) as f32;
                m[g] = 0.0;
            }
            for n in 0..2 {
                let (ql, qh) = (&ql_all[n * 64..], &qh_all[n * 32..]);
                let y = &mut q[n * 128..];
                for l in 0..32 {
                    y[l] = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
                    y[l + 32] = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
        }
        other => unreachable!("{other:?} has no block layout here"),
    }
}
