//! A safe handle on libjpeg-turbo's TurboJPEG 3 decompressor, through the raw `turbojpeg-sys`
//! bindings. Why not the `turbojpeg` crate's wrapper: a TurboJPEG call fails (returns −1)
//! whenever libjpeg raised a *warning*, even when the image decoded completely, and only
//! `tj3GetErrorCode` on the handle tells a warning from a fatal error; that crate keeps the
//! handle private and turns both into the same error, so files PIL loads (stray bytes before a
//! marker, for one) were skipped. Here every call says which it was ([`Outcome`]).
//!
//! Two facts of TurboJPEG 3.1 (its `turbojpeg.c`) make that subtle: the error code stays
//! "warning" once any warning was raised, even if a fatal error followed; and libjpeg formats
//! only the *first* warning of a call into the message, while a fatal error replaces it. So a
//! call that warned is made once more, stopping at its first warning (`TJPARAM_STOPONWARNING`):
//! if that warning is the message the full call left, no fatal error followed ([`Decompressor::run`]).

use std::ffi::{c_int, CStr};
use std::ptr::NonNull;

use anyhow::{anyhow, bail, ensure, Result};
use turbojpeg_sys as tj;

/// How a call that did not fail fatally ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// No warning.
    Clean,
    /// Warnings only, and the call went to its end; the text is the first warning.
    Warned(String),
}

/// What the header says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub width: usize,
    pub height: usize,
    /// Colour space (`TJCS_*`): CMYK and YCCK are not converted to RGB by TurboJPEG.
    pub colorspace: tj::TJCS,
    /// A lossless JPEG, which TurboJPEG cannot scale while decoding.
    pub lossless: bool,
}

/// One TurboJPEG decompressor instance (not shareable between threads: callers keep one per
/// thread).
pub(super) struct Decompressor(NonNull<std::ffi::c_void>);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0.as_ptr()) }
    }
}

impl Decompressor {
    pub fn new() -> Result<Self> {
        // SAFETY: tj3Init has no preconditions; a null result is handled.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        NonNull::new(handle).map(Self).ok_or_else(|| anyhow!("libjpeg-turbo could not create a decompressor"))
    }

    /// Sets a `TJPARAM_*` parameter.
    pub fn set(&mut self, param: tj::TJPARAM, value: i32) -> Result<()> {
        // SAFETY: a live handle; TurboJPEG validates the parameter and value.
        let status = unsafe { tj::tj3Set(self.0.as_ptr(), param as c_int, value) };
        ensure!(status == 0, "libjpeg-turbo: {}", self.message());
        Ok(())
    }

    fn get(&self, param: tj::TJPARAM) -> i32 {
        // SAFETY: a live handle; unknown parameters return −1.
        unsafe { tj::tj3Get(self.0.as_ptr(), param as c_int) }
    }

    /// The message of the last failed call.
    fn message(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the library, valid
        // until the next call on this thread; it is copied at once.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0.as_ptr())) }.to_string_lossy().into_owned()
    }

    /// How a call that returned `status` ended: `Warned` when the code says a warning was
    /// raised (a fatal error may have followed), an error when only a fatal error was.
    fn classify(&self, status: c_int) -> Result<Outcome> {
        if status == 0 {
            return Ok(Outcome::Clean);
        }
        // SAFETY: a live handle.
        let code = unsafe { tj::tj3GetErrorCode(self.0.as_ptr()) };
        let message = self.message();
        if code == tj::TJERR_TJERR_WARNING as c_int {
            Ok(Outcome::Warned(message))
        } else {
            bail!("{message}")
        }
    }

    /// Makes the TurboJPEG call `call` (returning its status) and says how it ended. A call
    /// that warned is made again stopping at its first warning: the same message means the
    /// full call raised warnings only; another means a fatal error came after them, and that
    /// error is returned.
    fn run(&mut self, mut call: impl FnMut(&mut Self) -> c_int) -> Result<Outcome> {
        self.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 0)?;
        let status = call(self);
        let Outcome::Warned(last) = self.classify(status)? else { return Ok(Outcome::Clean) };
        self.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        let status = call(self);
        let first = self.classify(status);
        self.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 0)?;
        match first {
            Ok(Outcome::Warned(first)) if first == last => Ok(Outcome::Warned(last)),
            _ => bail!("{last}"),
        }
    }

    /// Reads the header of the JPEG `bytes`.
    pub fn read_header(&mut self, bytes: &[u8]) -> Result<Header> {
        // SAFETY: `bytes` is valid for its length for the duration of the call.
        self.run(|d| unsafe { tj::tj3DecompressHeader(d.0.as_ptr(), bytes.as_ptr(), bytes.len() as _) })?;
        let (width, height) =
            (self.get(tj::TJPARAM_TJPARAM_JPEGWIDTH), self.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT));
        ensure!(width > 0 && height > 0, "the JPEG header has no valid size ({width}×{height})");
        Ok(Header {
            width: width as usize,
            height: height as usize,
            colorspace: self.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS,
            lossless: self.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1,
        })
    }

    /// Decodes the JPEG `bytes` (whose header is `header`) to RGB8 at `1 / denominator` of its
    /// size. Returns the pixels, their width and height, and how the decode ended.
    pub fn decompress_rgb(
        &mut self,
        bytes: &[u8],
        header: &Header,
        denominator: u32,
    ) -> Result<(Vec<u8>, usize, usize, Outcome)> {
        let factor = tj::tjscalingfactor { num: 1, denom: denominator as c_int };
        // SAFETY: a live handle; TurboJPEG refuses factors it does not support.
        let status = unsafe { tj::tj3SetScalingFactor(self.0.as_ptr(), factor) };
        ensure!(status == 0, "libjpeg-turbo: {}", self.message());
        let d = denominator as usize;
        let (width, height) = (header.width.div_ceil(d), header.height.div_ceil(d));
        let mut pixels = vec![0u8; 3 * width * height];
        let pitch = (3 * width) as c_int;
        let outcome = self.run(|dec| {
            // SAFETY: `pixels` holds `height` rows of `pitch` bytes, the scaled size TurboJPEG
            // writes (TJSCALED rounds up, as div_ceil does) in RGB.
            unsafe {
                tj::tj3Decompress8(
                    dec.0.as_ptr(),
                    bytes.as_ptr(),
                    bytes.len() as _,
                    pixels.as_mut_ptr(),
                    pitch,
                    tj::TJPF_TJPF_RGB,
                )
            }
        })?;
        Ok((pixels, width, height, outcome))
    }
}
