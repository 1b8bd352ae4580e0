//! TensorBoard event files through `tboard`: scalars, histograms, PNG images and a GraphDef of
//! the model's module hierarchy (hand-encoded: tboard ships no graph.proto, and a GraphDef
//! needs only three fields of NodeDef).

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use tboard::EventWriter;
use tch::{Kind, Tensor};

/// Buckets of a logged histogram.
const HISTOGRAM_BUCKETS: i64 = 30;

pub struct Logger {
    writer: EventWriter<File>,
}

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

fn tb_err(e: tboard::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Logger {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create log folder {}", dir.display()))?;
        let writer = EventWriter::create(dir)
            .map_err(tb_err)
            .with_context(|| format!("cannot create a TensorBoard event file in {}", dir.display()))?;
        Ok(Self { writer })
    }

    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.writer.write_scalar(step, tag, value as f32).map_err(tb_err).context("writing TensorBoard log")
    }

    /// A histogram of all values of `t` over equal-width buckets.
    pub fn histogram(&mut self, tag: &str, step: i64, t: &Tensor) -> Result<()> {
        let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).flatten(0, -1);
        let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
        let num = t.numel() as f64;
        let sum = t.sum(Kind::Double).double_value(&[]);
        let sum_squares = t.square().sum(Kind::Double).double_value(&[]);
        // histc spans [min, max], widened by 1 on each side when all values are equal.
        let (lo, hi) = if max > min { (min, max) } else { (min - 1.0, max + 1.0) };
        let counts = Vec::<f64>::try_from(&t.histc(HISTOGRAM_BUCKETS))?;
        let width = (hi - lo) / HISTOGRAM_BUCKETS as f64;
        let limits: Vec<f64> = (1..=HISTOGRAM_BUCKETS).map(|i| lo + width * i as f64).collect();
        self.writer
            .write_histo(step, tag, min, max, num, sum, sum_squares, counts, limits)
            .map_err(tb_err)
            .context("writing TensorBoard log")
    }

    pub fn image(&mut self, tag: &str, step: i64, img: &image::RgbImage) -> Result<()> {
        let mut png = Cursor::new(vec![]);
        img.write_to(&mut png, image::ImageFormat::Png)?;
        let (w, h) = img.dimensions();
        self.writer.write_image(step, tag, w as i32, h as i32, 3, png.into_inner()).map_err(tb_err)
    }

    pub fn graph(&mut self, nodes: &[GraphNode]) -> Result<()> {
        let what = tboard::tensorboard::event::What::GraphDef(encode_graph_def(nodes));
        self.writer.write(0, what).map_err(tb_err)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(tb_err).context("flushing TensorBoard log")
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// GraphDef { repeated NodeDef node = 1 }; NodeDef { name = 1, op = 2, repeated input = 3 }.
fn encode_graph_def(nodes: &[GraphNode]) -> Vec<u8> {
    let mut graph = vec![];
    for node in nodes {
        let mut n = vec![];
        put_bytes(&mut n, 1, node.name.as_bytes());
        put_bytes(&mut n, 2, node.op.as_bytes());
        for input in &node.inputs {
            put_bytes(&mut n, 3, input.as_bytes());
        }
        put_bytes(&mut graph, 1, &n);
    }
    graph
}

/// The DiT's module hierarchy and data flow as GraphDef nodes, named by the original's
/// attribute paths (`DIT/model_list/0/q_emb`), for TensorBoard's Graphs tab.
pub fn dit_graph(cfg: &crate::config::ModelConfig) -> Vec<GraphNode> {
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
        for m in crate::model::MODULATION {
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
