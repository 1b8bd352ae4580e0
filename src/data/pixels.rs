//! What the model's pixels are: the `u8` values v of a decoded image as x = v / 255 · 2 − 1,
//! in [−1, 1] (docs/ORIGINAL.md §4–5: the original's data set divides by 255, its step maps
//! that to [−1, 1]). Training and the quality metric's images both convert through here.

use tch::{Kind, Tensor};

/// `images` of any shape, `u8` (or any kind holding 0…255), as float32 in [−1, 1] on their
/// device.
pub fn to_model_range(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 255.0 * 2.0 - 1.0
}
