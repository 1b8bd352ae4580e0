//! The error convention shared by every extern "C" function of the project's C++ shims
//! (`src/ffi_guard.h`): 0 on success, else 1 with the first line of the C++ exception's
//! message in a NUL-terminated buffer that the caller provides.

use std::ffi::{c_char, c_int, CStr};

/// Runs one shim call with an error buffer; `Err` carries the shim's one-line message.
pub fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut err = vec![0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim NUL-terminates within the buffer's length whenever it fails.
    Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
}
