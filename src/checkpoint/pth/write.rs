//! Writing a `.pth` through libtorch's own serializer, by the C++ shim `writer.cpp` (built by
//! build.rs), so that `torch.load` reads the result with its defaults.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;

use anyhow::{bail, Result};
use tch::Tensor;

extern "C" {
    fn dit_write_pth(
        path: *const c_char,
        names: *const *const c_char,
        tensors: *const *const torch_sys::C_tensor,
        count: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// Writes a str → tensor dict that `torch.load(path)` reads with its defaults.
pub fn write(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let cpath = CString::new(path.to_string_lossy().as_bytes())?;
    let names: Vec<CString> =
        named.iter().map(|(n, _)| CString::new(n.as_str())).collect::<Result<_, _>>()?;
    let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let tensor_ptrs: Vec<*const torch_sys::C_tensor> = named.iter().map(|(_, t)| t.as_ptr()).collect();
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: every pointer lives until the call returns; the shim copies what it keeps.
    let rc = unsafe {
        dit_write_pth(
            cpath.as_ptr(),
            name_ptrs.as_ptr(),
            tensor_ptrs.as_ptr(),
            named.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim always NUL-terminates within err's length.
        bail!("{}", unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy());
    }
    Ok(())
}
