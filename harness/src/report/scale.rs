//! Numbers to pixels and colours: logarithmic axes, tick spacing and the agreement colour ramp.
//!
//! The engines are usually bit-exact, so the interesting quantities (1 − cosine, KL) span
//! many decades and are often exactly zero. A log axis shows the decades; zero gets its own
//! row under the axis instead of being clamped onto it silently.

/// Smallest positive value drawn on a log axis: f64 arithmetic on unit vectors cannot
/// resolve 1 − cosine much below this.
pub const FLOOR: f64 = 1e-16;

/// Agreement digits at which the colour ramp saturates (`−log10(1e-16)`).
pub const MAX_DIGITS: f64 = 16.0;

/// A vertical log10 axis over whole decades `[lo, hi]`, drawn from `top` (value `10^hi`) down
/// to `bottom` (value `10^lo`) in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogAxis {
    pub lo: i32,
    pub hi: i32,
    pub top: f64,
    pub bottom: f64,
}

impl LogAxis {
    /// The axis that holds every positive value of `values` and each of `must_show`, with at
    /// least `min_decades` decades, never below [`FLOOR`].
    pub fn fit(values: impl IntoIterator<Item = f64>, must_show: &[f64], min_decades: i32) -> (i32, i32) {
        let floor_exp = FLOOR.log10().round() as i32;
        let mut lo = i32::MAX;
        let mut hi = i32::MIN;
        for v in values.into_iter().chain(must_show.iter().copied()) {
            if v.is_finite() && v > 0.0 {
                let e = v.max(FLOOR).log10();
                lo = lo.min(e.floor() as i32);
                hi = hi.max(e.ceil() as i32);
            }
        }
        if lo > hi {
            // Nothing positive to show: a default window just above the floor.
            return (floor_exp, floor_exp + min_decades.max(1));
        }
        if hi == lo {
            hi += 1;
        }
        while hi - lo < min_decades {
            // Widen downwards first (the interesting detail is small), then upwards.
            if lo > floor_exp {
                lo -= 1;
            } else {
                hi += 1;
            }
        }
        (lo.max(floor_exp), hi)
    }

    /// Pixel row of a positive value (clamped into the axis).
    pub fn y(&self, v: f64) -> f64 {
        let e = v.max(FLOOR).log10().clamp(f64::from(self.lo), f64::from(self.hi));
        let t = (e - f64::from(self.lo)) / f64::from(self.hi - self.lo);
        self.bottom - t * (self.bottom - self.top)
    }

    /// The decades that get a labelled tick: at most about `max_labels` of them.
    pub fn label_decades(&self, max_labels: i32) -> Vec<i32> {
        let span = self.hi - self.lo;
        let step = (span + max_labels - 1) / max_labels.max(1);
        let step = step.max(1);
        // Anchored at the top so that 1e0 (or the top decade) is always labelled.
        let mut v: Vec<i32> = (0..=span / step).map(|k| self.hi - k * step).collect();
        v.reverse();
        v
    }
}

/// `1e-4`, `1`, `10`: a decade's label.
pub fn decade_label(e: i32) -> String {
    match e {
        0 => "1".into(),
        1 => "10".into(),
        _ => format!("1e{e}"),
    }
}

/// The smallest step from 1, 2, 5, 10, 20, 50, ... such that `step × slot ≥ min_px`.
pub fn nice_step(slot: f64, min_px: f64) -> usize {
    let mut base = 1usize;
    loop {
        for m in [1, 2, 5] {
            let step = base * m;
            if step as f64 * slot >= min_px {
                return step;
            }
        }
        base *= 10;
        if base > 1_000_000_000 {
            return base;
        }
    }
}

/// `−log10(1 − cosine)`, in `[0, MAX_DIGITS]`: how many decimal digits of the cosine are 9s.
/// A cosine of exactly 1 (or above, from rounding) gives `MAX_DIGITS`.
pub fn agreement_digits(cosine: f64) -> f64 {
    let d = 1.0 - cosine;
    if !d.is_finite() {
        return 0.0;
    }
    if d <= 0.0 {
        return MAX_DIGITS;
    }
    (-d.max(FLOOR).log10()).clamp(0.0, MAX_DIGITS)
}

/// Colour stops of the agreement ramp: (digits, RGB). Dark red where the tensors are unrelated,
/// through orange and yellow, to green where they agree to the last bits of an f32.
const RAMP: [(f64, [u8; 3]); 7] = [
    (0.0, [0x67, 0x00, 0x0d]),
    (2.0, [0xd7, 0x30, 0x27]),
    (4.0, [0xf4, 0x6d, 0x43]),
    (6.0, [0xfd, 0xd8, 0x6a]),
    (8.0, [0xd9, 0xef, 0x8b]),
    (11.0, [0x91, 0xcf, 0x60]),
    (16.0, [0x1a, 0x98, 0x50]),
];

/// Colour of a cell that is bit-exact: set apart from the ramp's "cosine rounds to 1".
pub const BIT_EXACT_COLOUR: &str = "#0b5d2a";

/// `#rrggbb` of `digits` on the agreement ramp.
pub fn ramp_colour(digits: f64) -> String {
    let d = if digits.is_finite() { digits.clamp(0.0, MAX_DIGITS) } else { 0.0 };
    let i = RAMP.iter().rposition(|&(at, _)| at <= d).unwrap_or(0);
    let (a, ca) = RAMP[i];
    let (b, cb) = RAMP[(i + 1).min(RAMP.len() - 1)];
    let t = if b > a { (d - a) / (b - a) } else { 0.0 };
    let mix = |x: u8, y: u8| (f64::from(x) + t * (f64::from(y) - f64::from(x))).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(ca[0], cb[0]), mix(ca[1], cb[1]), mix(ca[2], cb[2]))
}

/// Whether text on a cell of colour `#rrggbb` should be white (dark background) or black.
pub fn text_on(colour: &str) -> &'static str {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap_or(0);
    let (r, g, b) = ((v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff);
    // Rec. 601 luma, enough to choose between black and white.
    if 299 * r + 587 * g + 114 * b < 128_000 {
        "#ffffff"
    } else {
        "#000000"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_covers_values_and_thresholds() {
        assert_eq!(LogAxis::fit([1e-3, 2e-7], &[], 2), (-7, -3));
        assert_eq!(LogAxis::fit([0.0, 0.0], &[1e-4], 3), (-6, -3));
        // Zeros and non-finite values are not on the axis; nothing left gives a default.
        assert_eq!(LogAxis::fit([0.0, f64::NAN], &[], 4), (-16, -12));
        // Never below the floor, widened upwards when at it.
        assert_eq!(LogAxis::fit([1e-30], &[], 3), (-16, -13));
        assert_eq!(LogAxis::fit([0.5], &[], 1), (-1, 0));
    }

    #[test]
    fn y_maps_decades_linearly_and_clamps() {
        let a = LogAxis { lo: -16, hi: 0, top: 0.0, bottom: 160.0 };
        assert_eq!(a.y(1.0), 0.0);
        assert_eq!(a.y(1e-16), 160.0);
        assert_eq!(a.y(1e-8), 80.0);
        assert_eq!(a.y(0.0), 160.0);
        assert_eq!(a.y(10.0), 0.0);
        assert_eq!(a.label_decades(8), vec![-16, -14, -12, -10, -8, -6, -4, -2, 0]);
        let b = LogAxis { lo: -5, hi: 0, top: 0.0, bottom: 1.0 };
        assert_eq!(b.label_decades(8), vec![-5, -4, -3, -2, -1, 0]);
    }

    #[test]
    fn steps_and_labels() {
        assert_eq!(nice_step(14.0, 30.0), 5);
        assert_eq!(nice_step(40.0, 30.0), 1);
        assert_eq!(nice_step(1.0, 30.0), 50);
        assert_eq!(decade_label(-4), "1e-4");
        assert_eq!(decade_label(0), "1");
    }

    #[test]
    fn agreement_digits_and_ramp() {
        assert_eq!(agreement_digits(1.0), MAX_DIGITS);
        assert_eq!(agreement_digits(1.0 + 1e-16), MAX_DIGITS);
        assert!((agreement_digits(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(agreement_digits(-1.0), 0.0);
        assert_eq!(agreement_digits(f64::NAN), 0.0);
        assert_eq!(ramp_colour(0.0), "#67000d");
        assert_eq!(ramp_colour(16.0), "#1a9850");
        assert_eq!(ramp_colour(99.0), "#1a9850");
        assert_eq!(ramp_colour(1.0), "#9f181a");
        assert_eq!(text_on("#67000d"), "#ffffff");
        assert_eq!(text_on("#fdd86a"), "#000000");
    }
}
