//! The extern "C" functions of `c10d_shim.cpp`; each follows the error convention of
//! [`crate::ffi`].

use std::ffi::{c_char, c_int};

use torch_sys::C_tensor;

/// Opaque handles owned by the shim.
#[repr(C)]
pub struct DitStore {
    _private: [u8; 0],
}
#[repr(C)]
pub struct DitPg {
    _private: [u8; 0],
}
#[repr(C)]
pub struct DitReducer {
    _private: [u8; 0],
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub fn dit_store_new(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world_size: c_int,
        wait_workers: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut DitStore,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_store_clone(
        s: *mut DitStore,
        out: *mut *mut DitStore,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_store_set_timeout(
        s: *mut DitStore,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_store_add(
        s: *mut DitStore,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_store_free(s: *mut DitStore);
    pub fn dit_nccl_compiled() -> c_int;

    #[allow(clippy::too_many_arguments)]
    pub fn dit_pg_new(
        s: *mut DitStore,
        rank: c_int,
        size: c_int,
        backend: c_int,
        device: c_int,
        timeout_ms: i64,
        out: *mut *mut DitPg,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn dit_pg_allreduce(
        h: *mut DitPg,
        tensors: *const *const C_tensor,
        n: usize,
        op: c_int,
        bucket_bytes: i64,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn dit_pg_broadcast(
        h: *mut DitPg,
        tensors: *const *const C_tensor,
        n: usize,
        root: c_int,
        bucket_bytes: i64,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_pg_barrier(h: *mut DitPg, timeout_ms: i64, err: *mut c_char, err_len: usize) -> c_int;
    pub fn dit_pg_allgather_u64(
        h: *mut DitPg,
        values: *const u64,
        n: usize,
        out: *mut u64,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_pg_free(h: *mut DitPg);
    pub fn dit_pg_leak(h: *mut DitPg);

    #[allow(clippy::too_many_arguments)]
    pub fn dit_reducer_new(
        h: *mut DitPg,
        params: *const *const C_tensor,
        n: usize,
        bucket_bytes: i64,
        first_bucket_bytes: i64,
        out: *mut *mut DitReducer,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    pub fn dit_reducer_prepare(r: *mut DitReducer, err: *mut c_char, err_len: usize) -> c_int;
    pub fn dit_reducer_free(r: *mut DitReducer);
}

pub use crate::ffi::call;
