//! Numeric helpers the engine and the planner share: clamping untrusted inputs, and the
//! SplitMix64 mixer behind tie-break keys and the planner's fixed-seed RNG.

/// A value in `[0, 1]` (NaN counts as 0).
pub(crate) fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// A non-negative finite value (NaN, infinities and negatives count as 0).
pub(crate) fn non_negative(x: f64) -> f64 {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
}

/// The SplitMix64 step: advances `x` by the golden-ratio increment and mixes the result (the
/// engine's tie-break key of a node for one request; the planner RNG's next output).
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
