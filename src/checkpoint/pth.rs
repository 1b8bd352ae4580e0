//! The `torch.save` zip-pickle format (`.pth`/`.pt`) of a state_dict, both ways.
//!
//! Reading: libtorch's own unpickler turns a `collections.OrderedDict` (what
//! `model.state_dict()` returns, so every file the original writes) into None, so this module
//! carries a small pickle machine for the opcodes `torch.save` emits (pickle protocol 2, see
//! CPython's `Lib/pickletools.py`) and rebuilds tensors from the archive's storages as
//! `torch._utils._rebuild_tensor_v2` does. Anything else in the pickle is refused by name.
//!
//! Writing: libtorch's own serializer, through the C++ shim `pth_writer.cpp`.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{Kind, Tensor};

/// A value on the pickle machine's stack.
#[derive(Debug)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    /// (dtype, key in the archive's data/ folder)
    Storage(Kind, String),
    Tensor(Tensor),
}

impl Value {
    fn shallow_clone(&self) -> Value {
        match self {
            Value::Mark => Value::Mark,
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Tuple(v) => Value::Tuple(v.iter().map(Value::shallow_clone).collect()),
            Value::List(v) => Value::List(v.iter().map(Value::shallow_clone).collect()),
            Value::Dict(v) => {
                Value::Dict(v.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect())
            }
            Value::Global(g) => Value::Global(g.clone()),
            Value::Storage(k, s) => Value::Storage(*k, s.clone()),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
        }
    }

    fn int(&self) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            other => bail!("expected an integer, found {other:?}"),
        }
    }

    fn ints(&self) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::int).collect(),
            other => bail!("expected a tuple of integers, found {other:?}"),
        }
    }
}

fn storage_kind(name: &str) -> Result<Kind> {
    Ok(match name {
        "torch.FloatStorage" => Kind::Float,
        "torch.DoubleStorage" => Kind::Double,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        other => bail!("unsupported storage type {other}"),
    })
}

/// Reads the zip entries of a torch.save archive; the pickle is `<prefix>/data.pkl`.
struct Archive {
    zip: zip::ZipArchive<std::fs::File>,
    prefix: String,
}

impl Archive {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let zip = zip::ZipArchive::new(file).map_err(|_| {
            anyhow::anyhow!("not a zip archive (files from torch.save before PyTorch 1.6 are not supported)")
        })?;
        let pkl = zip
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .context("no data.pkl in the archive")?
            .to_string();
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        Ok(Self { zip, prefix })
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let mut entry = self.zip.by_name(&full).with_context(|| format!("missing record {full}"))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("reading record {full}"))?;
        Ok(bytes)
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    archive: &'a mut Archive,
    storages: HashMap<String, Tensor>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        ensure!(self.pos + n <= self.data.len(), "pickle ends early");
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let end = self.data[self.pos..].iter().position(|&b| b == b'\n').context("pickle ends early")?;
        let s = String::from_utf8(self.take(end)?.to_vec())?;
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("pickle stack underflow")
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).context("pickle has no mark")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("pickle stack underflow")
    }

    fn storage(&mut self, kind: Kind, key: &str) -> Result<Tensor> {
        if let Some(t) = self.storages.get(key) {
            return Ok(t.shallow_clone());
        }
        let bytes = self.archive.read(&format!("data/{key}"))?;
        let elem = kind.elt_size_in_bytes();
        ensure!(bytes.len() % elem == 0, "storage {key} has a partial element");
        let t = Tensor::from_data_size(&bytes, &[(bytes.len() / elem) as i64], kind);
        self.storages.insert(key.to_string(), t.shallow_clone());
        Ok(t)
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(name) = callable else { bail!("cannot call {callable:?}") };
        let Value::Tuple(mut args) = args else { bail!("{name}: arguments are not a tuple") };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(vec![])),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                ensure!(args.len() >= 4, "{name}: too few arguments");
                let stride = args[3].ints()?;
                let size = args[2].ints()?;
                let offset = args[1].int()?;
                let Value::Storage(kind, key) = std::mem::replace(&mut args[0], Value::None) else {
                    bail!("{name}: first argument is not a storage")
                };
                let storage = self.storage(kind, &key)?;
                let needed =
                    offset + size.iter().zip(&stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>() + 1;
                ensure!(
                    size.contains(&0) || needed <= storage.numel() as i64,
                    "tensor reaches past the end of storage {key}"
                );
                Ok(Value::Tensor(storage.as_strided(&size, &stride, offset).contiguous()))
            }
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => bail!("{name}: first argument is not a tensor"),
            },
            other => bail!("the pickle calls {other}, which a state_dict never does"),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?) as i64;
                    self.stack.push(Value::Int(v))
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    ensure!(n <= 8, "integer too large");
                    let bytes = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8(self.take(n)?.to_vec())?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8(self.take(n)?.to_vec())?;
                    self.stack.push(Value::Str(s))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    ensure!(self.stack.len() >= n, "pickle stack underflow");
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => bail!("APPEND to a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => bail!("APPENDS to a non-list"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => bail!("SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    ensure!(items.len() % 2 == 0, "SETITEMS with an odd item count");
                    let mut it = items.into_iter();
                    let mut pairs = vec![];
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => bail!("SETITEMS on a non-dict"),
                    }
                }
                b'q' => {
                    let id = self.u8()? as u32;
                    let v = self.top()?.shallow_clone();
                    self.memo.insert(id, v);
                }
                b'r' => {
                    let id = self.u32()?;
                    let v = self.top()?.shallow_clone();
                    self.memo.insert(id, v);
                }
                b'h' | b'j' => {
                    let id = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v =
                        self.memo.get(&id).context("pickle refers to an unknown memo entry")?.shallow_clone();
                    self.stack.push(v)
                }
                b'Q' => {
                    // BINPERSID: ('storage', storage_type, key, location, numel)
                    let Value::Tuple(pid) = self.pop()? else { bail!("persistent id is not a tuple") };
                    match pid.as_slice() {
                        [Value::Str(tag), Value::Global(ty), Value::Str(key), ..] if tag == "storage" => {
                            let kind = storage_kind(ty)?;
                            self.stack.push(Value::Storage(kind, key.clone()))
                        }
                        other => bail!("unsupported persistent id {other:?}"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: an OrderedDict's state (its _metadata) carries no weights.
                    self.pop()?;
                }
                other => bail!("unsupported pickle opcode 0x{other:02x}"),
            }
        }
    }
}

/// Reads a `torch.save`d state_dict: every str → tensor entry, in file order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut archive = Archive::open(path)?;
    if let Ok(order) = archive.read("byteorder") {
        ensure!(order == b"little", "big-endian archives are not supported");
    }
    let pickle = archive.read("data.pkl")?;
    let mut machine = Machine {
        data: &pickle,
        pos: 0,
        stack: vec![],
        memo: HashMap::new(),
        archive: &mut archive,
        storages: HashMap::new(),
    };
    let Value::Dict(entries) = machine.run()? else { bail!("the file holds no dict (not a state_dict)") };
    entries
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (Value::Str(k), _) => bail!("entry {k:?} is not a tensor (not a plain state_dict)"),
            (k, _) => bail!("key {k:?} is not a string (not a state_dict)"),
        })
        .collect()
}

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
