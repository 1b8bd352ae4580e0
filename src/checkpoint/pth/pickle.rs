//! The small pickle machine that rebuilds a state_dict: the opcodes `torch.save` emits
//! (pickle protocol 2, see CPython's `Lib/pickletools.py`), tensors described as views of
//! storages as `torch._utils._rebuild_tensor_v2` makes them. The storages' bytes come from the
//! container (the zip's records, or what follows the pickles in the legacy format), so a view is
//! resolved by the caller once they are known. Anything else is refused by name.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use tch::{Kind, Tensor};

/// A tensor as the pickle describes it: a strided view of one storage.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub kind: Kind,
    /// The storage's key (its record in the zip's data/ folder; its name in the legacy list).
    pub key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl View {
    /// The tensor this view is of `storage` (1-D, of the view's kind), refused when it reaches
    /// past its end.
    pub fn of(&self, storage: &Tensor) -> Result<Tensor> {
        let (size, stride) = (&self.size, &self.stride);
        ensure!(
            self.offset >= 0 && stride.iter().all(|&s| s >= 0),
            "storage {}: a negative offset or stride",
            self.key
        );
        let needed =
            self.offset + size.iter().zip(stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>() + 1;
        ensure!(
            size.contains(&0) || needed <= storage.numel() as i64,
            "tensor reaches past the end of storage {}",
            self.key
        );
        Ok(storage.as_strided(size, stride, self.offset).contiguous())
    }
}

/// A value on the pickle machine's stack.
#[derive(Debug)]
pub(super) enum Value {
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
    Tensor(View),
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
            Value::Tensor(t) => Value::Tensor(t.clone()),
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

/// The pickle machine over one pickle: the zip's `data.pkl`, or one of the legacy format's
/// pickles in a row.
pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    /// A machine over the pickle that starts at byte `start` of `data`.
    pub(super) fn new(data: &'a [u8], start: usize) -> Self {
        Machine { data, pos: start, stack: vec![], memo: HashMap::new() }
    }

    /// Where the next byte after the STOP opcode is, once [`Machine::run`] returned.
    pub(super) fn end(&self) -> usize {
        self.pos
    }

    /// Runs the pickle to its STOP opcode and returns the value it leaves.
    pub(super) fn run(&mut self) -> Result<Value> {
        loop {
            match self.u8()? {
                b'.' => return self.pop(), // STOP
                op => self.execute(op)?,
            }
        }
    }

    /// Executes one opcode other than STOP.
    fn execute(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 => {
                self.u8()?; // PROTO
            }
            b'(' => self.stack.push(Value::Mark),
            b'N' | 0x88 | 0x89 | b'K' | b'M' | b'J' | 0x8a | b'G' | b'X' | 0x8c | b'c' => {
                let v = self.scalar(op)?;
                self.stack.push(v)
            }
            b')' | b't' | 0x85..=0x87 | b']' | b'}' => {
                let v = self.collection(op)?;
                self.stack.push(v)
            }
            b'a' | b'e' | b's' | b'u' => self.fill(op)?,
            b'q' | b'r' | b'h' | b'j' => self.memo_op(op)?,
            b'Q' => {
                let v = self.persistent_id()?;
                self.stack.push(v)
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
        Ok(())
    }

    /// The value of a constant opcode: None, a bool, an int, a float, a string, a global.
    fn scalar(&mut self, op: u8) -> Result<Value> {
        Ok(match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'K' => Value::Int(self.u8()? as i64),
            b'M' => Value::Int(self.u16()? as i64),
            b'J' => Value::Int(i32::from_le_bytes(self.take(4)?.try_into()?) as i64),
            0x8a => Value::Int(self.long1()?),
            b'G' => Value::Float(f64::from_be_bytes(self.take(8)?.try_into()?)),
            b'X' => {
                let n = self.u32()? as usize;
                Value::Str(String::from_utf8(self.take(n)?.to_vec())?)
            }
            0x8c => {
                let n = self.u8()? as usize;
                Value::Str(String::from_utf8(self.take(n)?.to_vec())?)
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(format!("{module}.{name}"))
            }
            other => bail!("unsupported pickle opcode 0x{other:02x}"),
        })
    }

    /// LONG1's operand: a little-endian two's complement integer of n bytes.
    fn long1(&mut self) -> Result<i64> {
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
        Ok(v)
    }

    /// A new tuple (from the stack), list or dict.
    fn collection(&mut self, op: u8) -> Result<Value> {
        Ok(match op {
            b')' => Value::Tuple(vec![]),
            b't' => Value::Tuple(self.pop_mark()?),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                ensure!(self.stack.len() >= n, "pickle stack underflow");
                Value::Tuple(self.stack.split_off(self.stack.len() - n))
            }
            b']' => Value::List(vec![]),
            b'}' => Value::Dict(vec![]),
            other => bail!("unsupported pickle opcode 0x{other:02x}"),
        })
    }

    /// APPEND, APPENDS, SETITEM, SETITEMS: items into the list or dict below them.
    fn fill(&mut self, op: u8) -> Result<()> {
        let (name, items) = match op {
            b'a' => ("APPEND", vec![self.pop()?]),
            b's' => {
                let v = self.pop()?;
                ("SETITEM", vec![self.pop()?, v])
            }
            b'e' => ("APPENDS", self.pop_mark()?),
            b'u' => ("SETITEMS", self.pop_mark()?),
            other => bail!("unsupported pickle opcode 0x{other:02x}"),
        };
        ensure!(items.len() % 2 == 0 || op != b'u', "SETITEMS with an odd item count");
        let into_list = matches!(op, b'a' | b'e');
        match self.top()? {
            Value::List(l) if into_list => l.extend(items),
            Value::Dict(d) if !into_list => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            _ if into_list => bail!("{name} to a non-list"),
            _ => bail!("{name} on a non-dict"),
        }
        Ok(())
    }

    /// BINPUT, LONG_BINPUT (remember the top of the stack), BINGET, LONG_BINGET (push it back).
    fn memo_op(&mut self, op: u8) -> Result<()> {
        let id = if matches!(op, b'q' | b'h') { self.u8()? as u32 } else { self.u32()? };
        if matches!(op, b'q' | b'r') {
            let v = self.top()?.shallow_clone();
            self.memo.insert(id, v);
        } else {
            let v = self.memo.get(&id).context("pickle refers to an unknown memo entry")?.shallow_clone();
            self.stack.push(v)
        }
        Ok(())
    }

    /// BINPERSID: ('storage', storage_type, key, location, numel) names a storage record.
    fn persistent_id(&mut self) -> Result<Value> {
        let Value::Tuple(pid) = self.pop()? else { bail!("persistent id is not a tuple") };
        match pid.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), ..] if tag == "storage" => {
                Ok(Value::Storage(storage_kind(ty)?, key.clone()))
            }
            other => bail!("unsupported persistent id {other:?}"),
        }
    }

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
                ensure!(
                    size.len() == stride.len(),
                    "{name}: {} sizes but {} strides",
                    size.len(),
                    stride.len()
                );
                Ok(Value::Tensor(View { kind, key, offset, size, stride }))
            }
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => bail!("{name}: first argument is not a tensor"),
            },
            other => bail!("the pickle calls {other}, which a state_dict never does"),
        }
    }
}
