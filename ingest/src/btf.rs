//! A minimal reader and in-place editor of an object's raw `.BTF` section: enough to
//! find `.kconfig` externs, size their types and rewrite names, which aya 0.14 keeps
//! private.

const MAGIC: u16 = 0xeb9f;
const HEADER: usize = 24;
const TYPE_HEADER: usize = 12;

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

/// `BTF_VAR_GLOBAL_ALLOCATED`: what a resolved extern becomes.
pub const VAR_GLOBAL_ALLOCATED: u32 = 1;

/// One type: where its record starts in the section, and its header fields.
#[derive(Debug, Clone, Copy)]
pub struct Type {
    /// Byte offset of the type's record in the section.
    pub at: usize,
    /// Length of the record (header and the kind's trailing data).
    pub len: usize,
    pub name_off: u32,
    pub kind: u32,
    pub vlen: u32,
    /// `size` or `type`, depending on the kind.
    pub size_or_type: u32,
}

/// The parsed layout of a `.BTF` section (little-endian, as BPF objects are built here).
#[derive(Debug)]
pub struct Btf<'a> {
    data: &'a [u8],
    /// Types by id; id 0 (void) is `None`.
    types: Vec<Option<Type>>,
    types_at: usize,
    types_len: usize,
    strings_at: usize,
    strings_len: usize,
}

/// Why an object's `.BTF` section cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error(".BTF: no BTF header (or not little-endian)")]
    NoHeader,
    #[error(".BTF: sections run past its end")]
    SectionsPastEnd,
    #[error(".BTF: truncated type")]
    TruncatedType,
    #[error(".BTF: unknown type kind {0}")]
    UnknownKind(u32),
    #[error(".BTF: types overrun their section")]
    TypesOverrun,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Walks the type records of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::NoHeader);
        }
        let word = |i: usize| u32_at(data, 8 + 4 * i).unwrap() as usize;
        let hdr_len = u32_at(data, 4).unwrap() as usize;
        let (type_off, type_len, str_off, str_len) = (word(0), word(1), word(2), word(3));
        let types_at = hdr_len;
        let strings_at = hdr_len + str_off;
        if types_at + type_off + type_len > data.len() || strings_at + str_len > data.len() {
            return Err(BtfError::SectionsPastEnd);
        }
        let mut types = vec![None];
        let mut at = types_at + type_off;
        let end = at + type_len;
        while at < end {
            let info = u32_at(data, at + 4).ok_or(BtfError::TruncatedType)?;
            let mut t = Type {
                at,
                len: 0,
                name_off: u32_at(data, at).unwrap(),
                kind: (info >> 24) & 0x1f,
                vlen: info & 0xffff,
                size_or_type: u32_at(data, at + 8).ok_or(BtfError::TruncatedType)?,
            };
            let vlen = t.vlen as usize;
            let extra = match t.kind {
                KIND_INT | KIND_VAR | 17 => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | 13 => 8 * vlen,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | 16 | KIND_TYPE_TAG => 0,
                k => return Err(BtfError::UnknownKind(k)),
            };
            t.len = TYPE_HEADER + extra;
            types.push(Some(t));
            at += t.len;
        }
        if at != end {
            return Err(BtfError::TypesOverrun);
        }
        Ok(Self {
            data,
            types,
            types_at: types_at + type_off,
            types_len: type_len,
            strings_at,
            strings_len: str_len,
        })
    }

    /// Every type with its id.
    pub fn types(&self) -> impl Iterator<Item = (u32, Type)> + '_ {
        self.types
            .iter()
            .enumerate()
            .filter_map(|(id, t)| Some((id as u32, (*t)?)))
    }

    pub fn get(&self, id: u32) -> Option<Type> {
        *self.types.get(id as usize)?
    }

    /// The string at `off` in the string table.
    pub fn string(&self, off: u32) -> Option<&'a str> {
        let start = self.strings_at + off as usize;
        let table = self.data.get(start..self.strings_at + self.strings_len)?;
        let len = table.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&table[..len]).ok()
    }

    /// Offset of the string table's first byte in the section, and its length.
    pub fn strings(&self) -> (usize, usize) {
        (self.strings_at, self.strings_len)
    }

    /// The raw record of a type.
    pub fn record(&self, t: &Type) -> &'a [u8] {
        &self.data[t.at..t.at + t.len]
    }

    /// The name of the struct member whose record starts at `at`.
    pub fn member_name(&self, at: usize) -> Option<&'a str> {
        self.string(u32_at(self.data, at)?)
    }

    /// A struct's or union's members: (record offset, type id, bit offset).
    pub fn members(&self, t: &Type) -> Vec<(usize, u32, u32)> {
        let kflag = u32_at(self.data, t.at + 4).unwrap_or(0) >> 31 == 1;
        (0..t.vlen as usize)
            .map(|i| {
                let at = t.at + TYPE_HEADER + 12 * i;
                let offset = u32_at(self.data, at + 8).unwrap_or(0);
                let bits = if kflag { offset & 0xff_ffff } else { offset };
                (at, u32_at(self.data, at + 4).unwrap_or(0), bits)
            })
            .collect()
    }

    /// Entries of a DATASEC: (offset of the entry record, var type id).
    pub fn datasec_entries(&self, t: &Type) -> Vec<(usize, u32)> {
        (0..t.vlen as usize)
            .map(|i| {
                let at = t.at + TYPE_HEADER + 12 * i;
                (at, u32_at(self.data, at).unwrap_or(0))
            })
            .collect()
    }

    /// Skips typedefs and qualifiers.
    pub fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// An INT's encoding byte (1 signed, 2 char, 4 bool).
    pub fn int_encoding(&self, t: &Type) -> u32 {
        u32_at(self.data, t.at + TYPE_HEADER).map_or(0, |v| v >> 24)
    }

    /// An ARRAY's element type and length.
    pub fn array(&self, t: &Type) -> Option<(u32, u32)> {
        let at = t.at + TYPE_HEADER;
        Some((u32_at(self.data, at)?, u32_at(self.data, at + 8)?))
    }

    /// Byte size of a type, where it has one.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_DATASEC => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, n) = self.array(&t)?;
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }
}

/// A rebuilt `.BTF` section: in-place edits, appended types and strings.
#[derive(Debug)]
pub struct Edit {
    header: Vec<u8>,
    types: Vec<u8>,
    /// Where the original types start in the original section.
    types_at: usize,
    strings: Vec<u8>,
    next_id: u32,
}

impl Edit {
    pub fn new(btf: &Btf<'_>) -> Self {
        let hdr_len = u32_at(btf.data, 4).unwrap_or(HEADER as u32) as usize;
        Self {
            header: btf.data[..hdr_len].to_vec(),
            types: btf.data[btf.types_at..btf.types_at + btf.types_len].to_vec(),
            types_at: btf.types_at,
            strings: btf.data[btf.strings_at..btf.strings_at + btf.strings_len].to_vec(),
            next_id: btf.types.len() as u32,
        }
    }

    /// Overwrites the u32 at `at` (an offset in the original section, inside a type).
    pub fn put(&mut self, at: usize, v: u32) {
        put_u32(&mut self.types, at - self.types_at, v);
    }

    pub fn add_string(&mut self, s: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Appends a type record; returns its id.
    pub fn add_type(&mut self, record: &[u8]) -> u32 {
        self.types.extend_from_slice(record);
        self.next_id += 1;
        self.next_id - 1
    }

    /// The section's bytes: header, types, strings.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        let words = [0, self.types.len(), self.types.len(), self.strings.len()];
        for (i, w) in words.into_iter().enumerate() {
            put_u32(&mut out, 8 + 4 * i, w as u32);
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Writes a little-endian u32 into a section's bytes.
pub fn put_u32(data: &mut [u8], at: usize, v: u32) {
    data[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offset of a VAR's linkage word.
pub fn var_linkage_at(t: &Type) -> usize {
    t.at + TYPE_HEADER
}
