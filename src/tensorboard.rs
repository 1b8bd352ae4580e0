//! TensorBoard event files through `tboard`: scalars, histograms, PNG images and a GraphDef of
//! the model's module hierarchy (hand-encoded: tboard ships no graph.proto, and a GraphDef
//! needs only three fields of NodeDef).

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use tboard::EventWriter;
use tch::{Kind, Tensor};

use crate::model::GraphNode;

/// Buckets of a logged histogram.
const HISTOGRAM_BUCKETS: i64 = 30;

pub struct Logger {
    writer: EventWriter<File>,
}

fn tb_err(e: tboard::Error) -> anyhow::Error {
    match e {
        // Kept as an io::Error, so that a full disk is told as one ([`crate::fs::explain`]).
        tboard::Error::Io(io) => io.into(),
        other => anyhow::anyhow!("{other}"),
    }
}

impl Logger {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create log folder {}", dir.display()))?;
        // The first event is written at once, so a full disk shows here.
        let writer = EventWriter::create(dir).map_err(|e| crate::fs::explain(dir, tb_err(e), 64 * 1024))?;
        Ok(Self { writer })
    }

    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        let r = self.writer.write_scalar(step, tag, value as f32).map_err(tb_err);
        self.named(r)
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
        let r = self
            .writer
            .write_histo(step, tag, min, max, num, sum, sum_squares, counts, limits)
            .map_err(tb_err);
        self.named(r)
    }

    pub fn image(&mut self, tag: &str, step: i64, img: &image::RgbImage) -> Result<()> {
        let mut png = Cursor::new(vec![]);
        img.write_to(&mut png, image::ImageFormat::Png)?;
        let (w, h) = img.dimensions();
        let r = self.writer.write_image(step, tag, w as i32, h as i32, 3, png.into_inner()).map_err(tb_err);
        self.named(r)
    }

    pub fn graph(&mut self, nodes: &[GraphNode]) -> Result<()> {
        let what = tboard::tensorboard::event::What::GraphDef(encode_graph_def(nodes));
        let r = self.writer.write(0, what).map_err(tb_err);
        self.named(r)
    }

    pub fn flush(&mut self) -> Result<()> {
        let r = self.writer.flush().map_err(tb_err);
        self.named(r)
    }

    /// A write's error as one line naming the event file and what it needs.
    fn named(&self, r: Result<()>) -> Result<()> {
        r.map_err(|e| match self.writer.filename() {
            Some(file) => crate::fs::explain(file, e, 64 * 1024),
            None => e.context("writing TensorBoard log"),
        })
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
