//! Writing a `.pth` through libtorch's own serializer, by the C++ shim `writer.cpp` (built by
//! build.rs), so that `torch.load` reads the result with its defaults.

use std::ffi::{c_char, CString};
use std::path::Path;

use anyhow::Result;
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
    // SAFETY: every pointer lives until the call returns; the shim copies what it keeps.
    crate::ffi::call(|err, len| unsafe {
        dit_write_pth(cpath.as_ptr(), name_ptrs.as_ptr(), tensor_ptrs.as_ptr(), named.len(), err, len)
    })
    .map_err(|e| anyhow::anyhow!(e))
}
