//! The DiT's data flow as a graph of named operations (the original's attribute paths, such
//! as `DIT/model_list/0/q_emb`), for TensorBoard's Graphs tab: the original logs its traced
//! graph there. Written beside [`super::Dit`]'s `Display` (the module tree) so that both views
//! of the architecture live in the model.

/// One node of a GraphDef: a name whose `/` parts form the hierarchy, an op, its inputs.
pub struct GraphNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
}

impl GraphNode {
    pub fn new(name: impl Into<String>, op: &str, inputs: &[&str]) -> Self {
        Self { name: name.into(), op: op.into(), inputs: inputs.iter().map(|s| s.to_string()).collect() }
    }
}

/// The DiT's module hierarchy and data flow as GraphDef nodes, named by the original's
/// attribute paths (`DIT/model_list/0/q_emb`), for TensorBoard's Graphs tab.
pub fn dit_graph(cfg: &crate::config::ModelConfig) -> Vec<GraphNode> {
    if cfg.arch == crate::config::Arch::Lightning {
        return lightning_graph(cfg);
    }
    let mut g = vec![
        GraphNode::new("input/x", "Placeholder", &[]),
        GraphNode::new("input/y", "Placeholder", &[]),
        GraphNode::new("input/t", "Placeholder", &[]),
        GraphNode::new("DIT/time_emb/0/features", "SinusoidalCosSin", &["input/t"]),
        GraphNode::new("DIT/time_emb/0/mlp/0", "Linear", &["DIT/time_emb/0/features"]),
        GraphNode::new("DIT/time_emb/0/mlp/1", "ReLU", &["DIT/time_emb/0/mlp/0"]),
        GraphNode::new("DIT/time_emb/0/mlp/2", "Linear", &["DIT/time_emb/0/mlp/1"]),
        GraphNode::new("DIT/time_emb/1", "Linear", &["DIT/time_emb/0/mlp/2"]),
        GraphNode::new("DIT/time_emb/2", "ReLU", &["DIT/time_emb/1"]),
        GraphNode::new("DIT/time_emb/3", "Linear", &["DIT/time_emb/2"]),
        GraphNode::new("DIT/label_emb", "Embedding", &["input/y"]),
        GraphNode::new("DIT/cond", "Add", &["DIT/label_emb", "DIT/time_emb/3"]),
        GraphNode::new("DIT/conv", "Conv2d", &["input/x"]),
        GraphNode::new("DIT/patchify", "PermuteReshape", &["DIT/conv"]),
        GraphNode::new("DIT/patch_emb", "Linear", &["DIT/patchify"]),
        GraphNode::new("DIT/position_emb", "Parameter", &[]),
        GraphNode::new("DIT/add_position", "Add", &["DIT/patch_emb", "DIT/position_emb"]),
    ];
    let mut x = "DIT/add_position".to_string();
    for i in 0..cfg.dit_num {
        let b = format!("DIT/model_list/{i}");
        let n = |s: &str| format!("{b}/{s}");
        for m in super::MODULATION {
            g.push(GraphNode::new(n(m), "Linear", &["DIT/cond"]));
        }
        let node = |name: String, op: &str, inputs: &[&str]| GraphNode::new(name, op, inputs);
        g.push(node(n("ln_1"), "LayerNorm", &[&x]));
        g.push(node(n("modulate_1"), "ScaleShift", &[&n("ln_1"), &n("gama_emb_1"), &n("beita_emb_1")]));
        for m in ["q_emb", "k_emb", "v_emb"] {
            g.push(node(n(m), "Linear", &[&n("modulate_1")]));
        }
        g.push(node(n("attention"), "SoftmaxAttention", &[&n("q_emb"), &n("k_emb"), &n("v_emb")]));
        g.push(node(n("linear_back"), "Linear", &[&n("attention")]));
        g.push(node(n("residual_1"), "GatedAdd", &[&x, &n("linear_back"), &n("alfa_emb_1")]));
        g.push(node(n("ln_2"), "LayerNorm", &[&n("residual_1")]));
        g.push(node(n("modulate_2"), "ScaleShift", &[&n("ln_2"), &n("gama_emb_2"), &n("beita_emb_2")]));
        g.push(node(n("feed_forward/0"), "Linear", &[&n("modulate_2")]));
        g.push(node(n("feed_forward/1"), "ReLU", &[&n("feed_forward/0")]));
        g.push(node(n("feed_forward/2"), "Linear", &[&n("feed_forward/1")]));
        g.push(node(
            n("residual_2"),
            "GatedAdd",
            &[&n("residual_1"), &n("feed_forward/2"), &n("alfa_emb_2")],
        ));
        x = n("residual_2");
    }
    g.push(GraphNode::new("DIT/ln", "LayerNorm", &[&x]));
    g.push(GraphNode::new("DIT/linear", "Linear", &["DIT/ln"]));
    g.push(GraphNode::new("DIT/unpatchify", "ReshapePermute", &["DIT/linear"]));
    g.push(GraphNode::new("output", "Identity", &["DIT/unpatchify"]));
    g
}

/// LightningDiT's modules and data flow, named by its attribute paths, one node per module.
fn lightning_graph(cfg: &crate::config::ModelConfig) -> Vec<GraphNode> {
    let n =
        |name: &str, op: &str, inputs: &[&str]| GraphNode::new(format!("LightningDiT/{name}"), op, inputs);
    let mut g = vec![
        GraphNode::new("input/x", "Placeholder", &[]),
        GraphNode::new("input/y", "Placeholder", &[]),
        GraphNode::new("input/t", "Placeholder", &[]),
        n("x_embedder/proj", "Conv2d", &["input/x"]),
        n("pos_embed", "Buffer", &[]),
        n("tokens", "Add", &["LightningDiT/x_embedder/proj", "LightningDiT/pos_embed"]),
        n("t_embedder", "TimestepEmbedder", &["input/t"]),
        n("y_embedder", "Embedding", &["input/y"]),
        n("c", "Add", &["LightningDiT/t_embedder", "LightningDiT/y_embedder"]),
    ];
    let mut x = "LightningDiT/tokens".to_string();
    for i in 0..cfg.dit_num {
        let b = format!("blocks/{i}");
        g.push(n(&format!("{b}/adaLN_modulation"), "SiLULinear", &["LightningDiT/c"]));
        let ada = format!("LightningDiT/{b}/adaLN_modulation");
        g.push(n(&format!("{b}/attn"), "Attention", &[&x, &ada]));
        let attn = format!("LightningDiT/{b}/attn");
        g.push(n(&format!("{b}/mlp"), if cfg.use_swiglu { "SwiGLUFFN" } else { "Mlp" }, &[&attn, &ada]));
        x = format!("LightningDiT/{b}/mlp");
    }
    g.push(n("final_layer", "FinalLayer", &[&x, "LightningDiT/c"]));
    g.push(n("unpatchify", "ReshapePermute", &["LightningDiT/final_layer"]));
    g.push(GraphNode::new("output", "Identity", &["LightningDiT/unpatchify"]));
    g
}
