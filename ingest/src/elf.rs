//! Rewrites a clang-built BPF object into one aya 0.14 loads the way libbpf would load
//! the original: attach-point section names its parser rejects are shortened in the
//! section names and in BTF (so CO-RE and BTF.ext records still find their section),
//! and `.kconfig` externs become a read-only data section holding their values.

use std::collections::HashMap;

use crate::{
    btf::{self, Btf, BtfError},
    kconfig::{KconfigError, Kind},
};

const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;
const STB_WEAK: u8 = 2;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const STV_HIDDEN: u8 = 2;
const SHDR: usize = 64;
const SYM: usize = 24;

/// The data section `.kconfig` externs move into: aya loads `.rodata*` sections as
/// frozen maps, so the verifier sees their values as constants, as with libbpf.
pub const KCONFIG_SECTION: &str = ".rodata.kconfig";

/// Per-object load settings, written into the object itself so one aya loader (and its
/// parse of the kernel's BTF) serves every object.
#[derive(Debug, Default)]
pub struct Settings<'s> {
    /// Globals to set: name, value bytes, whether the object must have it.
    pub globals: Vec<(&'s str, Vec<u8>, bool)>,
    /// BTF-defined maps to resize: name, max_entries.
    pub max_entries: Vec<(&'s str, u32)>,
    /// Maps to create without key and value BTF (the kernel refused it).
    pub plain_maps: Vec<String>,
}

/// One `.kconfig` extern the object declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extern {
    pub name: String,
    pub kind: Kind,
    /// Declared `__weak`: reads 0 when the kernel does not define it.
    pub weak: bool,
}

#[derive(Debug, Clone, Copy)]
struct Shdr {
    at: usize,
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

/// Why an object cannot be rewritten for aya.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF object")]
    NotElf64,
    /// The file's structure is broken: truncated, a section past its end, ...
    #[error("ELF: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(".BTF.ext: CO-RE records too small")]
    CoreRecordsTooSmall,
    #[error("flexible array of unsized elements")]
    UnsizedFlexibleArray,
    #[error(".kconfig: an entry is not a variable")]
    ExternNotVariable,
    /// An extern's BTF type is not one libbpf can fill.
    #[error("kconfig extern {name}: {problem}")]
    ExternType { name: String, problem: &'static str },
    #[error("kconfig extern {name}: no undefined symbol")]
    ExternWithoutSymbol { name: String },
    #[error("kconfig extern {name}: {source}")]
    ExternValue {
        name: String,
        #[source]
        source: KconfigError,
    },
    #[error("kconfig extern {name}: value of the wrong size")]
    ExternSize { name: String },
    #[error(
        "kconfig extern {name} is not defined by this kernel; declare it __weak to read 0 instead"
    )]
    ExternUndefined { name: String },
    #[error("global {name}: not in the object")]
    GlobalMissing { name: String },
    #[error("global {name}: {found} bytes in the object, {given} given")]
    GlobalSize {
        name: String,
        found: usize,
        given: usize,
    },
    #[error("global {name}: not initialized data: declare it const volatile with a value")]
    GlobalNotInitialized { name: String },
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes(s.try_into().unwrap()))
        .ok_or(ElfError::Malformed("truncated"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or(ElfError::Malformed("truncated"))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or(ElfError::Malformed("truncated"))
}

/// One symbol: where its record is in the file, and its fields.
#[derive(Debug, Clone, Copy)]
struct Sym<'a> {
    at: usize,
    name: &'a str,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

struct Elf<'a> {
    bytes: &'a [u8],
    sections: Vec<Shdr>,
    shstrndx: usize,
}

impl<'a> Elf<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
            return Err(ElfError::NotElf64);
        }
        let shoff = u64_at(bytes, 40)? as usize;
        let shnum = u16_at(bytes, 60)? as usize;
        let shstrndx = u16_at(bytes, 62)? as usize;
        if u16_at(bytes, 58)? as usize != SHDR
            || shnum == 0
            || shstrndx >= shnum
            || shoff
                .checked_add(shnum * SHDR)
                .is_none_or(|end| end > bytes.len())
        {
            return Err(ElfError::Malformed("unexpected section header table"));
        }
        let sections = (0..shnum)
            .map(|i| {
                let at = shoff + i * SHDR;
                Ok(Shdr {
                    at,
                    name: u32_at(bytes, at)?,
                    kind: u32_at(bytes, at + 4)?,
                    offset: u64_at(bytes, at + 24)? as usize,
                    size: u64_at(bytes, at + 32)? as usize,
                    link: u32_at(bytes, at + 40)?,
                })
            })
            .collect::<Result<Vec<_>, ElfError>>()?;
        for s in &sections {
            if s.kind != SHT_NOBITS && s.offset.checked_add(s.size).is_none_or(|e| e > bytes.len())
            {
                return Err(ElfError::Malformed(
                    "a section runs past the end of the file",
                ));
            }
        }
        Ok(Self {
            bytes,
            sections,
            shstrndx,
        })
    }

    fn data(&self, s: &Shdr) -> &'a [u8] {
        if s.kind == SHT_NOBITS {
            return &[];
        }
        &self.bytes[s.offset..s.offset + s.size]
    }

    fn cstr(table: &[u8], off: usize) -> Option<&str> {
        let t = table.get(off..)?;
        std::str::from_utf8(&t[..t.iter().position(|&b| b == 0)?]).ok()
    }

    fn section_name(&self, s: &Shdr) -> Option<&'a str> {
        Self::cstr(self.data(&self.sections[self.shstrndx]), s.name as usize)
    }

    /// The symbol table's entries (none without one).
    fn symbols(&self) -> Result<Vec<Sym<'a>>, ElfError> {
        let Some(symtab) = self.sections.iter().copied().find(|s| s.kind == SHT_SYMTAB) else {
            return Ok(Vec::new());
        };
        let strtab = self
            .sections
            .get(symtab.link as usize)
            .copied()
            .ok_or(ElfError::Malformed("symbol table without strings"))?;
        let names = self.data(&strtab);
        (0..symtab.size / SYM)
            .map(|i| {
                let at = symtab.offset + i * SYM;
                Ok(Sym {
                    at,
                    name: Self::cstr(names, u32_at(self.bytes, at)? as usize).unwrap_or(""),
                    info: self.bytes[at + 4],
                    other: self.bytes[at + 5],
                    shndx: u16_at(self.bytes, at + 6)?,
                    value: u64_at(self.bytes, at + 8)?,
                    size: u64_at(self.bytes, at + 16)?,
                })
            })
            .collect()
    }

    fn by_name(&self, name: &str) -> Option<Shdr> {
        self.sections
            .iter()
            .copied()
            .find(|s| self.section_name(s) == Some(name))
    }
}

/// How aya must see a section name it cannot parse: `xdp/<ifname>` ends at the slash,
/// `usdt/<binary>:<provider>:<name>` starts with `uprobe/` (a USDT program is a uprobe).
/// Same length, so no offset moves. Returns (offset in the name, bytes to write).
fn rename(name: &str) -> Option<(usize, &'static [u8])> {
    if name.starts_with("xdp/") {
        Some((3, b"\0"))
    } else if name.starts_with("usdt/") && name.len() >= 7 {
        Some((0, b"uprobe/"))
    } else {
        None
    }
}

/// The `.kconfig` externs `btf` declares, with their DATASEC entries and VAR types.
fn kconfig_externs(btf: &Btf<'_>) -> Result<Vec<(Extern, usize, btf::Type)>, ElfError> {
    let Some((_, sec)) = btf
        .types()
        .find(|(_, t)| t.kind == btf::KIND_DATASEC && btf.string(t.name_off) == Some(".kconfig"))
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (entry_at, var_id) in btf.datasec_entries(&sec) {
        let var = btf
            .get(var_id)
            .filter(|v| v.kind == btf::KIND_VAR)
            .ok_or(ElfError::ExternNotVariable)?;
        let name = btf.string(var.name_off).unwrap_or("?").to_string();
        let bad_type = |problem| ElfError::ExternType {
            name: name.clone(),
            problem,
        };
        let t = btf
            .resolve(var.size_or_type)
            .ok_or_else(|| bad_type("type not found"))?;
        let kind = match t.kind {
            btf::KIND_INT => match (btf.int_encoding(&t), t.size_or_type) {
                (4, 1) => Kind::Bool,
                (2, 1) => Kind::Char,
                (enc, size @ (1 | 2 | 4 | 8)) => Kind::Int {
                    size,
                    signed: enc & 1 != 0,
                },
                _ => return Err(bad_type("unsupported integer")),
            },
            btf::KIND_ENUM if btf.string(t.name_off) == Some("libbpf_tristate") => Kind::Tristate,
            btf::KIND_ARRAY => {
                let (elem, len) = btf.array(&t).unwrap_or((0, 0));
                match btf.resolve(elem) {
                    Some(e) if e.kind == btf::KIND_INT && e.size_or_type == 1 && len > 0 => {
                        Kind::Str { len }
                    }
                    _ => return Err(bad_type("arrays must be of char")),
                }
            }
            _ => {
                return Err(bad_type(
                    "type must be bool, char, an integer, enum libbpf_tristate or a char array",
                ))
            }
        };
        out.push((
            Extern {
                name,
                kind,
                weak: false,
            },
            entry_at,
            var,
        ));
    }
    Ok(out)
}

/// The object's `.kconfig` externs (for tests and errors).
pub fn externs(bytes: &[u8]) -> Result<Vec<Extern>, ElfError> {
    let elf = Elf::parse(bytes)?;
    let Some(btf_sec) = elf.by_name(".BTF") else {
        return Ok(Vec::new());
    };
    let btf = Btf::parse(elf.data(&btf_sec))?;
    Ok(kconfig_externs(&btf)?
        .into_iter()
        .map(|(e, ..)| e)
        .collect())
}

/// The key type of each BTF-defined map (`__type(key, T)`), by map name; maps that
/// give only `key_size` are left out.
pub fn map_key_types(bytes: &[u8]) -> Result<Vec<(String, crate::map_entries::KeyType)>, ElfError> {
    use crate::map_entries::KeyType;
    let elf = Elf::parse(bytes)?;
    let Some(btf_sec) = elf.by_name(".BTF") else {
        return Ok(Vec::new());
    };
    let btf = Btf::parse(elf.data(&btf_sec))?;
    let mut out = Vec::new();
    for (name, def) in all_map_defs(&btf) {
        let key = btf.members(&def).into_iter().find_map(|(at, ty, _)| {
            (btf.member_name(at) == Some("key"))
                .then(|| btf.get(ty))
                .flatten()
        });
        let Some(ptr) = key.filter(|k| k.kind == btf::KIND_PTR) else {
            continue;
        };
        let Some(t) = btf.resolve(ptr.size_or_type) else {
            continue;
        };
        let size = btf.size_of(ptr.size_or_type).unwrap_or(0);
        let kind = match t.kind {
            btf::KIND_INT => KeyType::Int {
                size,
                signed: btf.int_encoding(&t) & 1 == 1,
            },
            btf::KIND_ENUM | btf::KIND_ENUM64 => KeyType::Int {
                size,
                signed: false,
            },
            btf::KIND_ARRAY => {
                let elem = btf.array(&t).and_then(|(e, _)| btf.resolve(e));
                match elem {
                    Some(e) if e.kind == btf::KIND_INT && e.size_or_type == 1 => {
                        KeyType::Chars { len: size }
                    }
                    _ => KeyType::Other { size },
                }
            }
            _ => KeyType::Other { size },
        };
        out.push((name.to_string(), kind));
    }
    Ok(out)
}

/// Shortens section names aya cannot parse, in the section string table and wherever
/// BTF names the section (BTF.ext records and DATASECs find their section by name).
fn rename_sections(elf: &Elf<'_>, btf: Option<(&Btf<'_>, Shdr)>, o: &mut [u8]) {
    let shstr = elf.sections[elf.shstrndx];
    for s in elf.sections.iter().filter(|s| s.kind == SHT_PROGBITS) {
        let Some(name) = elf.section_name(s) else {
            continue;
        };
        let Some((at, with)) = rename(name) else {
            continue;
        };
        let pos = shstr.offset + s.name as usize + at;
        o[pos..pos + with.len()].copy_from_slice(with);
        let Some((b, bs)) = btf else {
            continue;
        };
        let (strings_at, len) = b.strings();
        let table = &elf.data(&bs)[strings_at..strings_at + len];
        let mut needle = name.as_bytes().to_vec();
        needle.push(0);
        let mut i = 0;
        while let Some(p) = table[i..].windows(needle.len()).position(|w| w == needle) {
            let start = i + p;
            // Whole strings only: the match begins the table or follows a NUL.
            if start == 0 || table[start - 1] == 0 {
                let pos = bs.offset + strings_at + start + at;
                o[pos..pos + with.len()].copy_from_slice(with);
            }
            i = start + needle.len();
        }
    }
}

/// Lays out the `.kconfig` externs' values and turns the externs into variables of
/// [`KCONFIG_SECTION`]: their symbols defined there, their DATASEC renamed and sized,
/// their VARs allocated (the kernel refuses extern VARs). Returns the section's bytes.
fn kconfig_section(
    elf: &Elf<'_>,
    btf: &Btf<'_>,
    edit: &mut btf::Edit,
    o: &mut [u8],
    mut value: impl FnMut(&Extern) -> Result<Option<Vec<u8>>, KconfigError>,
) -> Result<Option<Vec<u8>>, ElfError> {
    let mut externs = kconfig_externs(btf)?;
    if externs.is_empty() {
        return Ok(None);
    }
    let symbols: HashMap<&str, Sym<'_>> = elf
        .symbols()?
        .into_iter()
        .filter(|s| s.shndx == 0 && !s.name.is_empty())
        .map(|s| (s.name, s))
        .collect();
    let new_index = elf.sections.len() as u16;
    // Values in declaration order, each aligned to its own size (at most 8).
    let mut data = Vec::new();
    for (e, entry_at, var) in &mut externs {
        let sym = symbols
            .get(e.name.as_str())
            .ok_or_else(|| ElfError::ExternWithoutSymbol {
                name: e.name.clone(),
            })?
            .at;
        e.weak = elf.bytes[sym + 4] >> 4 == STB_WEAK;
        let size = e.kind.size() as usize;
        let align = match e.kind {
            Kind::Str { .. } => 1,
            k => k.size().min(8) as usize,
        };
        data.resize(data.len().div_ceil(align) * align, 0);
        let offset = data.len();
        let name = || e.name.clone();
        match value(e).map_err(|source| ElfError::ExternValue {
            name: name(),
            source,
        })? {
            Some(v) if v.len() == size => data.extend_from_slice(&v),
            Some(_) => return Err(ElfError::ExternSize { name: name() }),
            None if e.weak => data.resize(offset + size, 0),
            None => return Err(ElfError::ExternUndefined { name: name() }),
        }
        edit.put(*entry_at + 4, offset as u32);
        edit.put(*entry_at + 8, size as u32);
        edit.put(btf::var_linkage_at(var), btf::VAR_GLOBAL_ALLOCATED);
        o[sym + 4] = (o[sym + 4] & 0xf0) | STT_OBJECT;
        o[sym + 6..sym + 8].copy_from_slice(&new_index.to_le_bytes());
        o[sym + 8..sym + 16].copy_from_slice(&(offset as u64).to_le_bytes());
        o[sym + 16..sym + 24].copy_from_slice(&(size as u64).to_le_bytes());
    }
    let (_, datasec) = btf
        .types()
        .find(|(_, t)| t.kind == btf::KIND_DATASEC && btf.string(t.name_off) == Some(".kconfig"))
        .expect("externs came from it");
    let name = edit.add_string(KCONFIG_SECTION);
    edit.put(datasec.at, name);
    edit.put(datasec.at + 8, data.len() as u32);
    Ok(Some(data))
}

/// CO-RE field relocations into a trailing flexible array (`ctx->args[1]` of a
/// tracepoint context) that aya 0.14 refuses while libbpf accepts them: aya checks
/// the array index against the parent's member count. Each such relocation is pointed
/// at a copy of its struct whose array has room for the index; the copy keeps the
/// name, so the target kernel's struct is still the one matched.
fn fix_flexible_arrays(
    elf: &Elf<'_>,
    btf: &Btf<'_>,
    edit: &mut btf::Edit,
    o: &mut [u8],
) -> Result<bool, ElfError> {
    let Some(ext) = elf.by_name(".BTF.ext") else {
        return Ok(false);
    };
    let data = elf.data(&ext);
    let word = |at: usize| u32_at(data, at);
    if data.len() < 8 || word(4)? < 32 {
        return Ok(false);
    }
    let hdr_len = word(4)? as usize;
    let (relo_off, relo_len) = (word(24)? as usize, word(28)? as usize);
    let start = hdr_len + relo_off;
    if relo_len == 0 || start + relo_len > data.len() {
        return Ok(false);
    }
    let rec_size = word(start)? as usize;
    if rec_size < 16 {
        return Err(ElfError::CoreRecordsTooSmall);
    }
    // (record offset in the section, root struct id, index).
    let mut fixes: Vec<(usize, u32, u32)> = Vec::new();
    let mut at = start + 4;
    while at + 8 <= start + relo_len {
        let n = word(at + 4)? as usize;
        at += 8;
        for _ in 0..n {
            let (type_id, access, kind) = (word(at + 4)?, word(at + 8)?, word(at + 12)?);
            // Field relocations only (byte offset, size, exists, signed, shifts).
            if kind <= 5 {
                if let Some(index) = flexible_index(btf, type_id, btf.string(access).unwrap_or(""))
                {
                    fixes.push((at, type_id, index));
                }
            }
            at += rec_size;
        }
    }
    if fixes.is_empty() {
        return Ok(false);
    }
    let mut copies: HashMap<u32, u32> = HashMap::new();
    let mut roots: Vec<u32> = fixes.iter().map(|f| f.1).collect();
    roots.sort_unstable();
    roots.dedup();
    // Indexes and sizes come from the object: a damaged one can overflow them.
    const OVERFLOW: ElfError = ElfError::Malformed("flexible array size overflows");
    for root in roots {
        let len = fixes
            .iter()
            .filter(|f| f.1 == root)
            .map(|f| f.2)
            .max()
            .unwrap()
            .checked_add(1)
            .ok_or(OVERFLOW)?;
        let t = btf.resolve(root).unwrap();
        let &(member_at, array_id, bits) = btf.members(&t).last().unwrap();
        let array = btf.resolve(array_id).unwrap();
        let (elem, _) = btf.array(&array).unwrap();
        let elem_size = btf.size_of(elem).ok_or(ElfError::UnsizedFlexibleArray)?;
        let mut record = btf.record(&array).to_vec();
        btf::put_u32(&mut record, 12 + 8, len);
        let new_array = edit.add_type(&record);
        let mut record = btf.record(&t).to_vec();
        btf::put_u32(&mut record, member_at - t.at + 4, new_array);
        let size = len
            .checked_mul(elem_size)
            .and_then(|n| n.checked_add(bits / 8))
            .ok_or(OVERFLOW)?
            .max(t.size_or_type);
        btf::put_u32(&mut record, 8, size);
        copies.insert(root, edit.add_type(&record));
    }
    for (rec, root, _) in fixes {
        let pos = ext.offset + rec + 4;
        o[pos..pos + 4].copy_from_slice(&copies[&root].to_le_bytes());
    }
    Ok(true)
}

/// Writes each setting's global into its data section (`const volatile` globals live
/// in `.rodata`, which the file holds).
fn set_globals(
    elf: &Elf<'_>,
    globals: &[(&str, Vec<u8>, bool)],
    o: &mut [u8],
) -> Result<(), ElfError> {
    if globals.is_empty() {
        return Ok(());
    }
    let symbols = elf.symbols()?;
    for (name, value, must_exist) in globals {
        let found = symbols
            .iter()
            .find(|s| s.shndx != 0 && (s.shndx as usize) < elf.sections.len() && s.name == *name)
            .map(|s| (s.shndx as usize, s.value as usize, s.size as usize));
        let Some((shndx, offset, size)) = found else {
            if *must_exist {
                return Err(ElfError::GlobalMissing {
                    name: name.to_string(),
                });
            }
            continue;
        };
        let sec = elf.sections[shndx];
        if size != value.len() {
            return Err(ElfError::GlobalSize {
                name: name.to_string(),
                found: size,
                given: value.len(),
            });
        }
        if sec.kind == SHT_NOBITS || offset.checked_add(size).is_none_or(|end| end > sec.size) {
            return Err(ElfError::GlobalNotInitialized {
                name: name.to_string(),
            });
        }
        o[sec.offset + offset..sec.offset + offset + size].copy_from_slice(value);
    }
    Ok(())
}

/// Each BTF-defined map (`.maps` variable): its name and struct type.
fn all_map_defs<'a>(btf: &Btf<'a>) -> Vec<(&'a str, btf::Type)> {
    let Some((_, maps)) = btf
        .types()
        .find(|(_, t)| t.kind == btf::KIND_DATASEC && btf.string(t.name_off) == Some(".maps"))
    else {
        return Vec::new();
    };
    btf.datasec_entries(&maps)
        .into_iter()
        .filter_map(|(_, var_id)| btf.get(var_id))
        .filter_map(|var| Some((btf.string(var.name_off)?, btf.resolve(var.size_or_type)?)))
        .filter(|(_, t)| t.kind == btf::KIND_STRUCT)
        .collect()
}

/// The struct type of each BTF-defined map whose name `wanted`.
fn map_defs(btf: &Btf<'_>, wanted: impl Fn(&str) -> bool) -> Vec<btf::Type> {
    all_map_defs(btf)
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(_, def)| def)
        .collect()
}

/// Adds what `__uint(name, n)` declares, a pointer to `int[n]` (a copy of `array`, an
/// `int[...]` of the object, with length `n`); returns the pointer's id.
fn add_uint(btf: &Btf<'_>, array: &btf::Type, n: u32, edit: &mut btf::Edit) -> u32 {
    let mut record = btf.record(array).to_vec();
    btf::put_u32(&mut record, 12 + 8, n);
    let sized = edit.add_type(&record);
    let mut ptr = vec![0u8; 12];
    btf::put_u32(&mut ptr, 4, btf::KIND_PTR << 24);
    btf::put_u32(&mut ptr, 8, sized);
    edit.add_type(&ptr)
}

/// The `int[N]` a `__uint(...)` member points at.
fn uint_array(btf: &Btf<'_>, ty: u32) -> Option<btf::Type> {
    btf.get(btf.get(ty)?.size_or_type)
        .filter(|a| a.kind == btf::KIND_ARRAY)
}

/// Resizes BTF-defined maps: each map's `max_entries` member is pointed at a new
/// `int[N]` of the wanted length.
fn set_max_entries(btf: &Btf<'_>, sizes: &[(&str, u32)], edit: &mut btf::Edit) -> bool {
    let mut changed = false;
    for &(name, size) in sizes {
        for def in map_defs(btf, |n| n == name) {
            for (at, ty, _) in btf.members(&def) {
                if btf.member_name(at) != Some("max_entries") {
                    continue;
                }
                if let Some(array) = uint_array(btf, ty) {
                    let ptr = add_uint(btf, &array, size, edit);
                    edit.put(at + 4, ptr);
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Turns the `__type(key, T)` and `__type(value, T)` of the named maps into
/// `__uint(key_size, sizeof(T))` and `value_size`, so aya creates them without BTF.
fn plain_maps(btf: &Btf<'_>, names: &[String], edit: &mut btf::Edit) -> bool {
    let mut changed = false;
    for def in map_defs(btf, |n| names.iter().any(|m| m == n)) {
        let members = btf.members(&def);
        // The `int[N]` of `__uint(type, ...)` serves as the template for sizes.
        let Some(array) = members
            .iter()
            .find(|&&(at, _, _)| btf.member_name(at) == Some("type"))
            .and_then(|&(_, ty, _)| uint_array(btf, ty))
        else {
            continue;
        };
        for &(at, ty, _) in &members {
            let new_name = match btf.member_name(at) {
                Some("key") => "key_size",
                Some("value") => "value_size",
                _ => continue,
            };
            let Some(size) = btf.get(ty).and_then(|p| btf.size_of(p.size_or_type)) else {
                continue;
            };
            let ptr = add_uint(btf, &array, size, edit);
            let name = edit.add_string(new_name);
            edit.put(at, name);
            edit.put(at + 4, ptr);
            changed = true;
        }
    }
    changed
}

/// Global functions marked `__hidden` (libbpf's headers mark theirs so) become static
/// in BTF, as libbpf makes them: the verifier then checks them in their caller's
/// context instead of alone, where every pointer argument might be NULL.
fn hidden_functions_static(
    elf: &Elf<'_>,
    btf: &Btf<'_>,
    edit: &mut btf::Edit,
) -> Result<bool, ElfError> {
    let hidden: std::collections::HashSet<&str> = elf
        .symbols()?
        .into_iter()
        .filter(|s| {
            let global = matches!(s.info >> 4, 1 | STB_WEAK);
            s.info & 0xf == STT_FUNC && global && s.other & 3 == STV_HIDDEN
        })
        .map(|s| s.name)
        .collect();
    let mut changed = false;
    for (_, t) in btf.types() {
        if t.kind == btf::KIND_FUNC
            && t.vlen != 0
            && btf.string(t.name_off).is_some_and(|n| hidden.contains(n))
        {
            edit.put(t.at + 4, btf::KIND_FUNC << 24);
            changed = true;
        }
    }
    Ok(changed)
}

/// The array index of an access `0:<member>:<index>[:...]` into `root`'s trailing
/// zero-length array (`ctx->args[1]`, or `addr->name[0].sun_path` further into the
/// element), when aya would refuse it.
fn flexible_index(btf: &Btf<'_>, root: u32, access: &str) -> Option<u32> {
    let parts: Vec<u32> = access
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [_, member, index, ..] = parts[..] else {
        return None;
    };
    let t = btf.resolve(root).filter(|t| t.kind == btf::KIND_STRUCT)?;
    let members = btf.members(&t);
    let &(_, ty, _) = members.get(member as usize)?;
    let array = btf.resolve(ty).filter(|a| a.kind == btf::KIND_ARRAY)?;
    let (_, len) = btf.array(&array)?;
    let last = member as usize + 1 == members.len();
    (len == 0 && last && index as usize + 1 != members.len()).then_some(index)
}

/// Rewrites `bytes` for aya with `settings` applied. `value` gives each `.kconfig`
/// extern's bytes (`None`: the kernel does not define it).
///
/// # Errors
/// A malformed object, a global that cannot be set, an extern whose value cannot be
/// stored, or a strong extern the kernel does not define (named in the message).
pub fn prepare(
    bytes: &[u8],
    settings: &Settings<'_>,
    value: impl FnMut(&Extern) -> Result<Option<Vec<u8>>, KconfigError>,
) -> Result<Vec<u8>, ElfError> {
    let elf = Elf::parse(bytes)?;
    let mut o = bytes.to_vec();
    set_globals(&elf, &settings.globals, &mut o)?;
    let Some(btf_sec) = elf.by_name(".BTF") else {
        rename_sections(&elf, None, &mut o);
        return Ok(o);
    };
    let btf = Btf::parse(elf.data(&btf_sec))?;
    rename_sections(&elf, Some((&btf, btf_sec)), &mut o);
    let renamed = Elf::parse(&o)?;
    let btf_renamed = Btf::parse(renamed.data(&btf_sec))?;
    let mut edit = btf::Edit::new(&btf_renamed);
    let mut o2 = o.clone();
    let kconfig = kconfig_section(&renamed, &btf_renamed, &mut edit, &mut o2, value)?;
    let flexible = fix_flexible_arrays(&renamed, &btf_renamed, &mut edit, &mut o2)?;
    let hidden = hidden_functions_static(&renamed, &btf_renamed, &mut edit)?;
    let resized = set_max_entries(&btf_renamed, &settings.max_entries, &mut edit);
    let plain = plain_maps(&btf_renamed, &settings.plain_maps, &mut edit);
    if kconfig.is_none() && !flexible && !hidden && !resized && !plain {
        return Ok(o2);
    }
    if elf.sections.len() >= 0xff00 {
        return Err(ElfError::Malformed("too many sections"));
    }
    // Appended: the new BTF, the kconfig values and a grown section name table, then
    // a section header table (one entry longer with kconfig values).
    let append = |o: &mut Vec<u8>, chunk: &[u8]| {
        o.resize(o.len().div_ceil(8) * 8, 0);
        let at = o.len();
        o.extend_from_slice(chunk);
        at
    };
    let new_btf = edit.finish();
    let shstr = elf.sections[elf.shstrndx];
    let mut new_shstr = renamed.data(&shstr).to_vec();
    let mut o = o2;
    let btf_at = append(&mut o, &new_btf);
    let mut extra = None;
    if let Some(data) = &kconfig {
        let name_off = new_shstr.len();
        new_shstr.extend_from_slice(KCONFIG_SECTION.as_bytes());
        new_shstr.push(0);
        extra = Some((name_off, append(&mut o, data), data.len()));
    }
    let shstr_at = append(&mut o, &new_shstr);
    let mut headers = Vec::with_capacity((elf.sections.len() + 1) * SHDR);
    for s in &elf.sections {
        let mut h = bytes[s.at..s.at + SHDR].to_vec();
        let moved = if s.at == shstr.at {
            Some((shstr_at, new_shstr.len()))
        } else if s.at == btf_sec.at {
            Some((btf_at, new_btf.len()))
        } else {
            None
        };
        if let Some((at, len)) = moved {
            h[24..32].copy_from_slice(&(at as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        }
        headers.extend_from_slice(&h);
    }
    if let Some((name_off, data_at, len)) = extra {
        let mut h = [0u8; SHDR];
        h[0..4].copy_from_slice(&(name_off as u32).to_le_bytes());
        h[4..8].copy_from_slice(&SHT_PROGBITS.to_le_bytes());
        h[8..16].copy_from_slice(&SHF_ALLOC.to_le_bytes());
        h[24..32].copy_from_slice(&(data_at as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        h[48..56].copy_from_slice(&8u64.to_le_bytes());
        headers.extend_from_slice(&h);
    }
    let count = headers.len() / SHDR;
    let shoff = append(&mut o, &headers);
    o[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
    o[60..62].copy_from_slice(&(count as u16).to_le_bytes());
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aya_cannot_parse() {
        assert_eq!(rename("xdp/eth0"), Some((3, &b"\0"[..])));
        assert_eq!(rename("usdt/app:p:n"), Some((0, &b"uprobe/"[..])));
        assert_eq!(rename("xdp"), None);
        assert_eq!(rename("tracepoint/a/b"), None);
    }

    #[test]
    fn objects_without_either_pass_through() {
        let o = bpf_programs::find("oom_kills").unwrap();
        assert_eq!(
            prepare(o.bytes, &Settings::default(), |_| Ok(None)).unwrap(),
            o.bytes
        );
        assert!(externs(o.bytes).unwrap().is_empty());
        assert!(prepare(b"not elf", &Settings::default(), |_| Ok(None)).is_err());
    }

    fn example(name: &str) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // Unique per call: tests run in parallel and may build the same example.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out =
            std::env::temp_dir().join(format!("kebpf-elf-{}-{call}-{name}.o", std::process::id()));
        test_support::compile_bpf(&root.join(format!("examples/{name}.bpf.c")), &out, &[]);
        let bytes = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(out);
        bytes
    }

    #[test]
    fn kconfig_externs_are_found_with_their_types() {
        let o = example("kconfig");
        let e = externs(&o).unwrap();
        let kinds: Vec<(&str, Kind)> = e.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (
                    "LINUX_KERNEL_VERSION",
                    Kind::Int {
                        size: 4,
                        signed: false
                    }
                ),
                ("LINUX_HAS_BPF_COOKIE", Kind::Bool),
                ("LINUX_HAS_SYSCALL_WRAPPER", Kind::Bool),
                (
                    "CONFIG_HZ",
                    Kind::Int {
                        size: 4,
                        signed: true
                    }
                ),
                ("CONFIG_BPF_SYSCALL", Kind::Tristate),
                ("CONFIG_KUBE_EBPF_EXPORTER_NO_SUCH_OPTION", Kind::Bool),
            ]
        );
        // Weak ones may be missing; a strong one may not, and is named.
        let mut seen = Vec::new();
        let out = prepare(&o, &Settings::default(), |e| {
            seen.push((e.name.clone(), e.weak));
            Ok((!e.weak).then(|| vec![1; e.kind.size() as usize]))
        })
        .unwrap();
        assert!(seen.contains(&("CONFIG_HZ".into(), true)));
        assert!(seen.contains(&("CONFIG_BPF_SYSCALL".into(), false)));
        // The rewritten object declares no externs any more: they are data now.
        assert!(externs(&out).unwrap().is_empty());
        let err = prepare(&o, &Settings::default(), |_| Ok(None)).unwrap_err();
        assert!(
            matches!(&err, ElfError::ExternUndefined { name } if name == "LINUX_KERNEL_VERSION"),
            "{err}"
        );
        let err = prepare(&o, &Settings::default(), |_| {
            Err(KconfigError::ModuleInBool)
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kconfig extern LINUX_KERNEL_VERSION: value m (module) does not fit a bool: declare it enum libbpf_tristate"
        );
    }

    /// `addr->name[0].sun_path`: aya compares the index 0 with the 3 members of
    /// `struct unix_address` and refuses it (aya-rs/aya#1662); libbpf accepts it.
    #[test]
    fn accesses_through_a_flexible_array_element_get_a_struct_with_room() {
        let o = example("unix-connects");
        let elf = Elf::parse(&o).unwrap();
        let btf = Btf::parse(elf.data(&elf.by_name(".BTF").unwrap())).unwrap();
        let (id, _) = btf
            .types()
            .find(|(_, t)| btf.string(t.name_off) == Some("unix_address"))
            .unwrap();
        assert_eq!(flexible_index(&btf, id, "0:2:0:1"), Some(0));
        let out = prepare(&o, &Settings::default(), |_| Ok(None)).unwrap();
        let elf = Elf::parse(&out).unwrap();
        let btf = Btf::parse(elf.data(&elf.by_name(".BTF").unwrap())).unwrap();
        let copies = btf
            .types()
            .filter(|(_, t)| btf.string(t.name_off) == Some("unix_address"))
            .count();
        assert_eq!(copies, 2);
    }

    #[test]
    fn flexible_array_accesses_get_a_struct_with_room() {
        let o = example("signals");
        let elf = Elf::parse(&o).unwrap();
        let btf = Btf::parse(elf.data(&elf.by_name(".BTF").unwrap())).unwrap();
        let (id, _) = btf
            .types()
            .find(|(_, t)| btf.string(t.name_off) == Some("syscall_trace_enter"))
            .unwrap();
        // ctx->args[1]: member 2 (args[0]) of three, index 1.
        assert_eq!(flexible_index(&btf, id, "0:2:1"), Some(1));
        assert_eq!(flexible_index(&btf, id, "0:1"), None);
        assert_eq!(
            flexible_index(&btf, id, "0:2:2"),
            None,
            "aya accepts this one"
        );
        let out = prepare(&o, &Settings::default(), |_| Ok(None)).unwrap();
        let elf = Elf::parse(&out).unwrap();
        let btf = Btf::parse(elf.data(&elf.by_name(".BTF").unwrap())).unwrap();
        let copies: Vec<_> = btf
            .types()
            .filter(|(_, t)| btf.string(t.name_off) == Some("syscall_trace_enter"))
            .collect();
        assert_eq!(copies.len(), 2);
        let (_, copy) = copies[1];
        let &(_, array, _) = btf.members(&copy).last().unwrap();
        assert_eq!(btf.array(&btf.get(array).unwrap()).unwrap().1, 2);
    }

    #[test]
    fn settings_are_written_into_the_object() {
        let o = bpf_programs::find("tcp_connect_latency").unwrap().bytes;
        let settings = Settings {
            globals: vec![("output_wakeup_bytes", 77u64.to_le_bytes().to_vec(), true)],
            max_entries: vec![("events", 1 << 16)],
            ..Default::default()
        };
        let out = prepare(o, &settings, |_| Ok(None)).unwrap();
        assert_ne!(out, o);
        let missing = Settings {
            globals: vec![("kaddr_nope", vec![0; 8], true)],
            ..Default::default()
        };
        assert_eq!(
            prepare(o, &missing, |_| Ok(None)).unwrap_err().to_string(),
            "global kaddr_nope: not in the object"
        );
        let wrong = Settings {
            globals: vec![("output_wakeup_bytes", vec![0; 4], true)],
            ..Default::default()
        };
        assert!(matches!(
            prepare(o, &wrong, |_| Ok(None)).unwrap_err(),
            ElfError::GlobalSize {
                found: 8,
                given: 4,
                ..
            }
        ));
    }

    /// Objects with each rewrite: none, kconfig externs, flexible arrays, USDT (renames,
    /// hidden functions).
    fn objects() -> &'static [Vec<u8>] {
        static OBJECTS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        OBJECTS.get_or_init(|| {
            let builtin = bpf_programs::find("tcp_connect_latency")
                .unwrap()
                .bytes
                .to_vec();
            vec![
                builtin,
                example("kconfig"),
                example("signals"),
                example("workload-jobs"),
            ]
        })
    }

    proptest::proptest! {
        /// A damaged object (cut short, one byte changed) is an error, never a panic.
        #[test]
        fn damaged_objects_are_errors_not_panics(which in 0usize..4, cut in 0usize..40000, flip in 0usize..40000, byte: u8) {
            let o = &objects()[which];
            let mut b = o[..cut.min(o.len())].to_vec();
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] = byte;
            }
            let settings = Settings {
                globals: vec![("output_wakeup_bytes", vec![0; 8], false)],
                max_entries: vec![("events", 4096)],
                plain_maps: vec!["events".into(), "__bpf_usdt_specs".into()],
            };
            let _ = prepare(&b, &settings, |e| Ok(Some(vec![0; e.kind.size() as usize])));
        }
    }
}
