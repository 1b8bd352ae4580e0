//! Activation checkpointing of the block stack (`runtime.activation_checkpointing: blocks`):
//! the forward pass keeps only each block's input, and the backward pass recomputes the blocks
//! one at a time from those inputs, last first (Chen et al. 2016, "Training Deep Nets with
//! Sublinear Memory Cost"; DiT's own code checkpoints per block with `torch.utils.checkpoint`,
//! which libtorch's C++ API and tch lack). Built on tch's autograd alone:
//!
//! 1. Forward: the stem (patchify, embeddings) with its graph; the blocks under `no_grad`,
//!    from a detached copy of the conditioning that is a leaf of its own (`cond_leaf`); the
//!    head from the last block's output, made a leaf (`last`), with its graph.
//! 2. `loss.backward()` fills the head's gradients and `last.grad()`.
//! 3. For each block, last first: recompute it with its graph from its saved input (made a
//!    leaf), and back-propagate the incoming gradient g through it as Σ(out ⊙ g): the backward
//!    pass of that sum hands out exactly g (g · 1), so the block receives the gradient the
//!    ordinary pass gives it, and leaves the next one in its input's `.grad()`. The
//!    conditioning's part gathers in `cond_leaf.grad()` in the order the ordinary pass sums it
//!    (last block first).
//! 4. The stem last: one backward pass of Σ(tokens ⊙ g₀) + Σ(cond ⊙ g_cond).
//!
//! Every operation of the ordinary backward pass runs on the same values in the same order,
//! so with deterministic kernels (naive attention on the CPU) the gradients are bit-identical
//! (`tests/checkpointing.rs`). The weights and the saved files do not change.

use tch::{Kind, Tensor};

use super::Dit;

/// A forward pass for training: its output, and what its backward pass needs.
pub struct TrainingForward {
    /// The model's output (B, C, I, I), as [`Dit::forward`] returns it.
    pub output: Tensor,
    recompute: Option<Recompute>,
}

/// What the backward pass of a checkpointed forward keeps: block inputs, not activations.
struct Recompute {
    /// The tokens entering block 0 and the conditioning, with the stem's graph.
    tokens: Tensor,
    cond: Tensor,
    /// The conditioning as every block saw it: a leaf that gathers their gradients.
    cond_leaf: Tensor,
    /// Each block's input, without a graph.
    inputs: Vec<Tensor>,
    /// The last block's output as a leaf: the head's graph starts there.
    last: Tensor,
}

impl Dit {
    /// The forward pass of a training step: [`Dit::forward`] when the runtime does not
    /// checkpoint, else the checkpointed pass of the module documentation. Back-propagate
    /// through [`TrainingForward::backward`], not `loss.backward()`.
    pub fn forward_for_training(&self, x: &Tensor, y: &Tensor, t: &Tensor) -> TrainingForward {
        if !self.compute().checkpoint_blocks {
            return TrainingForward { output: self.forward(x, y, t), recompute: None };
        }
        let (tokens, cond) = self.stem(x, y, t);
        let cond_leaf = cond.detach().set_requires_grad(true);
        let mut inputs = Vec::with_capacity(self.depth());
        let mut h = tokens.detach();
        tch::no_grad(|| {
            for i in 0..self.depth() {
                let next = self.block(i, &h, &cond_leaf);
                inputs.push(std::mem::replace(&mut h, next));
            }
        });
        let last = h.set_requires_grad(true);
        let output = self.head(&last, &cond_leaf);
        TrainingForward { output, recompute: Some(Recompute { tokens, cond, cond_leaf, inputs, last }) }
    }
}

impl TrainingForward {
    /// Back-propagates `loss`, a scalar computed from [`TrainingForward::output`], into the
    /// `.grad()` of every weight of `model` (the model that made this pass).
    pub fn backward(self, model: &Dit, loss: &Tensor) {
        loss.backward();
        let Some(r) = self.recompute else { return };
        let mut grad = r.last.grad();
        for (i, input) in r.inputs.iter().enumerate().rev() {
            let input = input.detach().set_requires_grad(true);
            let out = model.block(i, &input, &r.cond_leaf);
            (out * &grad).sum(Kind::Float).backward();
            grad = input.grad();
        }
        ((&r.tokens * &grad).sum(Kind::Float) + (&r.cond * r.cond_leaf.grad()).sum(Kind::Float)).backward();
    }
}
