//! The built-in data sets `builtin:pandas` (one class) and `builtin:pandas2` (pandas, label 0,
//! and red pandas, label 1, alternating): flat cartoon faces drawn with 4×4 supersampling, each
//! image a deterministic function of its index, so they need no files.

use super::CHANNELS;
use crate::rng::{SplitMix64, GOLDEN_GAMMA};

/// `data_path` of the one-class procedural panda data set.
pub const BUILTIN_PANDAS: &str = "builtin:pandas";
/// `data_path` of the two-class procedural data set: pandas (label 0) and red pandas (label 1).
pub const BUILTIN_PANDAS2: &str = "builtin:pandas2";
/// Number of images in each built-in data set.
pub const BUILTIN_LEN: usize = 4096;

/// One of the built-in data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    /// `builtin:pandas`: every image a panda.
    Pandas,
    /// `builtin:pandas2`: even indices pandas, odd ones red pandas.
    Pandas2,
}

impl Builtin {
    /// The built-in data set a `data_path` names, if it names one.
    pub(super) fn named(data_path: &str) -> Option<Builtin> {
        match data_path {
            BUILTIN_PANDAS => Some(Builtin::Pandas),
            BUILTIN_PANDAS2 => Some(Builtin::Pandas2),
            _ => None,
        }
    }

    /// Class names, indexed by label.
    pub(super) fn class_names(self) -> Vec<String> {
        let names: &[&str] = match self {
            Builtin::Pandas => &["panda"],
            Builtin::Pandas2 => &["panda", "red_panda"],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    /// The label of image `i`, or `None` past [`BUILTIN_LEN`].
    pub(super) fn label(self, i: usize) -> Option<i64> {
        let label = match self {
            Builtin::Pandas => 0,
            Builtin::Pandas2 => (i % 2) as i64,
        };
        (i < BUILTIN_LEN).then_some(label)
    }

    /// Image `i` as `img_size × img_size × 3` RGB bytes (HWC).
    pub(super) fn render(self, i: usize, img_size: i64) -> Vec<u8> {
        match self.label(i) {
            Some(1) => render_red_panda(i, img_size),
            _ => render_panda(i, img_size),
        }
    }
}

/// Seed of the per-image hash of the built-in data sets.
const BUILTIN_SEED: u64 = 0x5EED_0FDA_BEA5;
/// Supersamples per pixel side.
const SUPERSAMPLE: usize = 4;
/// Muted background colours, one picked per image.
const BACKGROUNDS: [[f32; 3]; 6] = [
    [122.0, 150.0, 118.0], // sage
    [118.0, 138.0, 166.0], // slate blue
    [172.0, 152.0, 118.0], // khaki
    [152.0, 122.0, 134.0], // dusty mauve
    [108.0, 136.0, 138.0], // teal grey
    [160.0, 160.0, 138.0], // grey beige
];
/// Face radius as a fraction of the image side (±6% per image).
const FACE_RADIUS: f64 = 0.30;
const FACE_RADIUS_JITTER: f64 = 0.06;
/// Largest offset of the face centre from the image centre, as a fraction of the side.
const CENTRE_JITTER: f64 = 0.03;
/// Largest head tilt, in degrees.
const MAX_TILT_DEG: f64 = 5.0;

const PANDA_BLACK: [f32; 3] = [28.0, 27.0, 30.0];
const EYE_WHITE: [f32; 3] = [235.0, 235.0, 228.0];
const RED_PANDA_FUR: [f32; 3] = [204.0, 98.0, 40.0];
const RED_PANDA_DARK: [f32; 3] = [96.0, 38.0, 22.0];
const RED_PANDA_TEAR: [f32; 3] = [150.0, 58.0, 26.0];
const RED_PANDA_WHITE: [f32; 3] = [240.0, 236.0, 226.0];
const RED_PANDA_EYE: [f32; 3] = [36.0, 22.0, 18.0];

/// The pose and colours of one built-in image.
struct Pose {
    /// Face centre, in units of the image side.
    cx: f64,
    cy: f64,
    /// Face radius, in units of the image side.
    radius: f64,
    cos: f64,
    sin: f64,
    background: [f32; 3],
    /// Small per-image shift of the face colour.
    shade: f32,
}

impl Pose {
    fn of(index: usize) -> Pose {
        let mut rng = SplitMix64(BUILTIN_SEED ^ (index as u64).wrapping_mul(GOLDEN_GAMMA));
        rng.next_u64();
        let background = BACKGROUNDS[rng.below(BACKGROUNDS.len())];
        let cx = 0.5 + rng.range(-CENTRE_JITTER, CENTRE_JITTER);
        let cy = 0.5 + rng.range(-CENTRE_JITTER, CENTRE_JITTER);
        let radius = FACE_RADIUS * (1.0 + rng.range(-FACE_RADIUS_JITTER, FACE_RADIUS_JITTER));
        let tilt = rng.range(-MAX_TILT_DEG, MAX_TILT_DEG).to_radians();
        let shade = rng.range(-6.0, 6.0) as f32;
        Pose { cx, cy, radius, cos: tilt.cos(), sin: tilt.sin(), background, shade }
    }

    /// The point (u, v) of the image (units of the side, y down) in face coordinates: face
    /// centre at the origin, face radius 1, the head's tilt undone.
    fn local(&self, u: f64, v: f64) -> (f64, f64) {
        let (dx, dy) = ((u - self.cx) / self.radius, (v - self.cy) / self.radius);
        (dx * self.cos + dy * self.sin, -dx * self.sin + dy * self.cos)
    }
}

/// Whether (x, y) lies in the ellipse centred at (cx, cy) with semi-axes (a, b), turned by
/// `angle` radians (clockwise on screen, since y points down).
fn in_ellipse(x: f64, y: f64, (cx, cy): (f64, f64), (a, b): (f64, f64), angle: f64) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    let (c, s) = (angle.cos(), angle.sin());
    let (ex, ey) = (dx * c + dy * s, -dx * s + dy * c);
    (ex / a).powi(2) + (ey / b).powi(2) <= 1.0
}

fn in_circle(x: f64, y: f64, centre: (f64, f64), r: f64) -> bool {
    in_ellipse(x, y, centre, (r, r), 0.0)
}

/// The lower half of a thin ring: one side of a cartoon mouth.
fn in_smile(x: f64, y: f64, (cx, cy): (f64, f64), r: f64, half_width: f64) -> bool {
    let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
    y >= cy && (d - r).abs() <= half_width
}

/// Renders `paint` (face coordinates → colour) into `img_size²` RGB bytes with supersampling.
fn render(pose: &Pose, img_size: i64, paint: impl Fn(f64, f64) -> Option<[f32; 3]>) -> Vec<u8> {
    let size = img_size.max(1) as usize;
    let mut out = Vec::with_capacity(size * size * CHANNELS);
    let step = 1.0 / (size * SUPERSAMPLE) as f64;
    let weight = 1.0 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for py in 0..size {
        for px in 0..size {
            let mut sum = [0f32; 3];
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let u = ((px * SUPERSAMPLE + sx) as f64 + 0.5) * step;
                    let v = ((py * SUPERSAMPLE + sy) as f64 + 0.5) * step;
                    let (x, y) = pose.local(u, v);
                    let colour = paint(x, y).unwrap_or(pose.background);
                    for (acc, c) in sum.iter_mut().zip(colour) {
                        *acc += c * weight;
                    }
                }
            }
            out.extend(sum.map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

fn shaded(colour: [f32; 3], shade: f32) -> [f32; 3] {
    colour.map(|c| (c + shade).clamp(0.0, 255.0))
}

/// Built-in image `index` of class "panda": `img_size × img_size × 3` RGB bytes (HWC),
/// a deterministic function of `index`. A white round face with black ears, black slanted eye
/// patches with white eye dots, a black nose and a small mouth, on one of six muted colours.
pub fn render_panda(index: usize, img_size: i64) -> Vec<u8> {
    let pose = Pose::of(index);
    let face = shaded([243.0, 241.0, 235.0], pose.shade);
    render(&pose, img_size, |x, y| {
        let mirrored = x.abs(); // the face is symmetric: draw the right half, mirror the left
        let mut colour = None;
        if in_circle(mirrored, y, (0.70, -0.68), 0.33) {
            colour = Some(PANDA_BLACK); // ears, partly behind the face
        }
        if in_ellipse(x, y, (0.0, 0.04), (1.0, 0.92), 0.0) {
            colour = Some(face);
        }
        if in_ellipse(mirrored, y, (0.38, 0.0), (0.20, 0.30), -0.6) {
            colour = Some(PANDA_BLACK); // eye patches, drooping outward
        }
        if in_circle(mirrored, y, (0.33, -0.05), 0.10) {
            colour = Some(EYE_WHITE);
        }
        if in_ellipse(x, y, (0.0, 0.32), (0.14, 0.09), 0.0) {
            colour = Some(PANDA_BLACK); // nose
        }
        if in_smile(mirrored, y, (0.075, 0.42), 0.075, 0.025) {
            colour = Some(PANDA_BLACK); // mouth
        }
        colour
    })
}

/// Built-in image `index` of class "red_panda" (label 1 of `builtin:pandas2`): the same pose
/// as [`render_panda`] but an orange face with white-rimmed ears, a white muzzle and brows,
/// rust tear marks and small dark eyes, and no eye patches.
pub fn render_red_panda(index: usize, img_size: i64) -> Vec<u8> {
    let pose = Pose::of(index);
    let fur = shaded(RED_PANDA_FUR, pose.shade);
    render(&pose, img_size, |x, y| {
        let mirrored = x.abs();
        let mut colour = None;
        if in_circle(mirrored, y, (0.70, -0.68), 0.33) {
            colour = Some(RED_PANDA_WHITE); // ear rims
        }
        if in_circle(mirrored, y, (0.70, -0.68), 0.22) {
            colour = Some(RED_PANDA_DARK);
        }
        if in_ellipse(x, y, (0.0, 0.04), (1.0, 0.92), 0.0) {
            colour = Some(fur);
        }
        if in_ellipse(mirrored, y, (0.40, 0.20), (0.08, 0.26), 0.25) {
            colour = Some(RED_PANDA_TEAR); // tear marks
        }
        if in_ellipse(x, y, (0.0, 0.40), (0.40, 0.30), 0.0) {
            colour = Some(RED_PANDA_WHITE); // muzzle
        }
        if in_ellipse(mirrored, y, (0.32, -0.34), (0.15, 0.09), 0.2) {
            colour = Some(RED_PANDA_WHITE); // brows
        }
        if in_circle(mirrored, y, (0.32, -0.08), 0.10) {
            colour = Some(RED_PANDA_EYE);
        }
        if in_ellipse(x, y, (0.0, 0.30), (0.14, 0.09), 0.0) {
            colour = Some(PANDA_BLACK); // nose
        }
        if in_smile(mirrored, y, (0.075, 0.40), 0.075, 0.025) {
            colour = Some(PANDA_BLACK); // mouth
        }
        colour
    })
}
