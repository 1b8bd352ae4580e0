//! Process-wide libtorch switches that tch does not expose (through `torch_flags.cpp`): the
//! backends `scaled_dot_product_attention` may choose from, and TF32 rounding of float32
//! products on CUDA. They change how results are computed, never what the model is.

use std::fmt;

use std::ffi::c_char;

use anyhow::{anyhow, Result};

use crate::ffi::call;

extern "C" {
    fn dit_set_sdp_backends(
        flash: i32,
        mem_efficient: i32,
        cudnn: i32,
        math: i32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn dit_sdp_backends(out: *mut i32, err: *mut c_char, len: usize) -> i32;
    fn dit_set_tf32(allow: i32, err: *mut c_char, len: usize) -> i32;
    fn dit_tf32(out: *mut i32, err: *mut c_char, len: usize) -> i32;
}

/// The backends of libtorch's fused attention (`at::SDPBackend`, in its numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SdpBackend {
    Math,
    Flash,
    Efficient,
    Cudnn,
}

impl SdpBackend {
    pub const ALL: [SdpBackend; 4] = [Self::Flash, Self::Efficient, Self::Cudnn, Self::Math];

    /// The backend of `at::_fused_sdp_choice`'s answer.
    pub fn from_choice(choice: i64) -> Option<Self> {
        match choice {
            0 => Some(Self::Math),
            1 => Some(Self::Flash),
            2 => Some(Self::Efficient),
            3 => Some(Self::Cudnn),
            _ => None,
        }
    }

    fn bit(self) -> i32 {
        match self {
            Self::Flash => 1,
            Self::Efficient => 2,
            Self::Cudnn => 4,
            Self::Math => 8,
        }
    }
}

impl fmt::Display for SdpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Math => "math",
            Self::Flash => "flash",
            Self::Efficient => "efficient",
            Self::Cudnn => "cudnn",
        })
    }
}

/// Lets `scaled_dot_product_attention` choose only among `allowed`.
pub fn set_sdp_backends(allowed: &[SdpBackend]) -> Result<()> {
    let on = |b: SdpBackend| i32::from(allowed.contains(&b));
    let (flash, efficient, cudnn, math) =
        (on(SdpBackend::Flash), on(SdpBackend::Efficient), on(SdpBackend::Cudnn), on(SdpBackend::Math));
    // SAFETY: plain setters on libtorch's global context.
    call(|err, len| unsafe { dit_set_sdp_backends(flash, efficient, cudnn, math, err, len) })
        .map_err(|e| anyhow!("setting the attention backends: {e}"))
}

/// The backends `scaled_dot_product_attention` may choose among now.
pub fn sdp_backends() -> Result<Vec<SdpBackend>> {
    let mut bits = 0;
    // SAFETY: a plain getter on libtorch's global context, writing one int.
    call(|err, len| unsafe { dit_sdp_backends(&mut bits, err, len) })
        .map_err(|e| anyhow!("reading the attention backends: {e}"))?;
    Ok(SdpBackend::ALL.into_iter().filter(|b| bits & b.bit() != 0).collect())
}

/// Allows (or forbids) TF32 rounding in float32 matrix products and convolutions on CUDA.
pub fn set_tf32(allow: bool) -> Result<()> {
    // SAFETY: plain setters on libtorch's global context.
    call(|err, len| unsafe { dit_set_tf32(i32::from(allow), err, len) })
        .map_err(|e| anyhow!("setting TF32: {e}"))
}

/// Whether TF32 is allowed for (cuBLAS products, cuDNN convolutions).
pub fn tf32() -> Result<(bool, bool)> {
    let mut bits = 0;
    // SAFETY: a plain getter on libtorch's global context, writing one int.
    call(|err, len| unsafe { dit_tf32(&mut bits, err, len) }).map_err(|e| anyhow!("reading TF32: {e}"))?;
    Ok((bits & 1 != 0, bits & 2 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_switches_round_trip() {
        let before = sdp_backends().unwrap();
        set_sdp_backends(&[SdpBackend::Math]).unwrap();
        assert_eq!(sdp_backends().unwrap(), [SdpBackend::Math]);
        set_sdp_backends(&[SdpBackend::Flash, SdpBackend::Efficient]).unwrap();
        assert_eq!(sdp_backends().unwrap(), [SdpBackend::Flash, SdpBackend::Efficient]);
        set_sdp_backends(&before).unwrap();
        set_tf32(false).unwrap();
        assert_eq!(tf32().unwrap(), (false, false));
    }
}
