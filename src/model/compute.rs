//! How a [`super::Dit`] computes, kept apart from what its weights are: the attention kernel,
//! the arithmetic of the products and what training recomputes, resolved once from `runtime` in the config for a device
//! and a token count. Neither changes the parameters, so any checkpoint runs under any choice.

use tch::{Device, Kind, Tensor};

use crate::config::{ActivationCheckpointing, Attention, Precision, RuntimeConfig};

/// From this many tokens on, `attention: auto` uses the fused kernel on the CPU too. Measured on
/// a 2-core AVX2 EPYC (BENCHMARKS.md): at 16 tokens the explicit form trains 5–12% faster; at 64
/// the two cost the same CPU time and the fused one peaks 11% lower in memory; at 4096 the fused
/// one is about 4× faster.
const AUTO_FUSED_TOKENS: i64 = 64;

/// The attention kernel a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// libtorch's `scaled_dot_product_attention` with the scale passed as 1/sqrt(L).
    Fused,
    /// The original's softmax(q·kᵀ / sqrt(L))·v, which materialises (B, H, L, L).
    Naive,
}

impl Kernel {
    /// softmax(q·kᵀ / `divisor`)·v for q, k, v (B, H, L, W) in one kind; the naive form takes
    /// its softmax in float32 and returns the inputs' kind.
    pub fn attend(self, q: &Tensor, k: &Tensor, v: &Tensor, divisor: f64) -> Tensor {
        match self {
            // libtorch's CPU flash kernel is several times slower on strided inputs.
            Self::Fused => Tensor::scaled_dot_product_attention(
                &q.contiguous(),
                &k.contiguous(),
                &v.contiguous(),
                None::<Tensor>,
                0.0,
                false,
                1.0 / divisor,
                false,
            ),
            Self::Naive => {
                let scores = q.matmul(&k.transpose(-2, -1)) / divisor; // (B, H, L, L)
                super::dit_block::cast(&scores.softmax(-1, Kind::Float), q.kind()).matmul(v)
            }
        }
    }
}

/// The resolved runtime choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub kernel: Kernel,
    /// Kind of the matrix products and attention: float32, or bfloat16 for mixed precision.
    pub dtype: Kind,
    /// Training recomputes each block in the backward pass instead of keeping its
    /// activations (`super::checkpointing`).
    pub checkpoint_blocks: bool,
}

impl Compute {
    /// `auto` attention is the naive form on the CPU below [`AUTO_FUSED_TOKENS`], fused otherwise.
    pub fn resolve(runtime: &RuntimeConfig, device: Device, tokens: i64) -> Self {
        let kernel = match runtime.attention {
            Attention::Naive => Kernel::Naive,
            Attention::Fused => Kernel::Fused,
            Attention::Auto if device == Device::Cpu && tokens < AUTO_FUSED_TOKENS => Kernel::Naive,
            Attention::Auto => Kernel::Fused,
        };
        let dtype = match runtime.precision {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Auto if native_bf16(device) => Kind::BFloat16,
            Precision::Auto => Kind::Float,
        };
        let checkpoint_blocks = runtime.activation_checkpointing == ActivationCheckpointing::Blocks;
        Self { kernel, dtype, checkpoint_blocks }
    }
}

/// One line for the start of a run: "attention naive, fp32".
impl std::fmt::Display for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kernel = if self.kernel == Kernel::Fused { "fused" } else { "naive" };
        let dtype = if self.dtype == Kind::BFloat16 { "bf16 mixed precision" } else { "fp32" };
        let recompute = if self.checkpoint_blocks { ", blocks recomputed in the backward pass" } else { "" };
        write!(f, "attention {kernel}, {dtype}{recompute}")
    }
}

/// Whether `precision: auto` computes in bfloat16 on `device`.
///
/// On the CPU: when the processor has bfloat16 dot-product instructions (AVX-512 BF16 on x86-64,
/// the BF16 extension on AArch64), as the standard library's feature detection reads them from
/// CPUID or HWCAP. Without them libtorch converts every bfloat16 product to float32
/// and back: measured 12–15× slower per matrix product than float32 on an AVX2 EPYC, so fp32.
/// On CUDA: false until bf16 training has been checked on a GPU (`scripts/gpu_check`).
pub fn native_bf16(device: Device) -> bool {
    device == Device::Cpu && cpu_native_bf16()
}

#[cfg(target_arch = "x86_64")]
fn cpu_native_bf16() -> bool {
    // Every processor with AMX-BF16 (Sapphire Rapids on) also has AVX-512 BF16, and the
    // standard library's AMX detection is not stable yet.
    std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(target_arch = "aarch64")]
fn cpu_native_bf16() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_native_bf16() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_precision_follows_the_cpus_bf16_support_and_explicit_choices_are_kept() {
        let at =
            |precision| Compute::resolve(&RuntimeConfig { precision, ..Default::default() }, Device::Cpu, 64);
        assert_eq!(at(Precision::Fp32).dtype, Kind::Float);
        assert_eq!(at(Precision::Bf16).dtype, Kind::BFloat16);
        let expected = if cpu_native_bf16() { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(at(Precision::Auto).dtype, expected);
        let cuda = RuntimeConfig { precision: Precision::Auto, ..Default::default() };
        assert_eq!(Compute::resolve(&cuda, Device::Cuda(0), 64).dtype, Kind::Float);
    }

    #[test]
    fn auto_attention_is_naive_on_the_cpu_below_64_tokens_and_fused_otherwise() {
        let auto = RuntimeConfig { attention: Attention::Auto, ..Default::default() };
        assert_eq!(Compute::resolve(&auto, Device::Cpu, 16).kernel, Kernel::Naive);
        assert_eq!(Compute::resolve(&auto, Device::Cpu, 64).kernel, Kernel::Fused);
        assert_eq!(Compute::resolve(&auto, Device::Cuda(0), 16).kernel, Kernel::Fused);
        let naive = RuntimeConfig { attention: Attention::Naive, ..Default::default() };
        assert_eq!(Compute::resolve(&naive, Device::Cpu, 4096).kernel, Kernel::Naive);
        let fused = RuntimeConfig { attention: Attention::Fused, ..Default::default() };
        assert_eq!(Compute::resolve(&fused, Device::Cpu, 16).kernel, Kernel::Fused);
    }

    /// The kernel's own account of the processor agrees with CPUID as the standard library reads it.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn bf16_detection_agrees_with_proc_cpuinfo() {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
        let listed = flags.split_whitespace().any(|f| f == "avx512_bf16");
        assert_eq!(native_bf16(Device::Cpu), listed, "{flags}");
    }
}
