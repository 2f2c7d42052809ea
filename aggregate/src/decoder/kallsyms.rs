//! Kernel symbols from /proc/kallsyms, for `ksym`, `kstack` and `kaddrs`.

use std::path::Path;

/// Sorted kernel symbols.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, name), sorted by address.
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    /// Parses kallsyms text (`address type name [module]`), skipping zero addresses,
    /// which is all an unprivileged reader sees.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let _kind = f.next()?;
                let name = f.next()?;
                (addr != 0).then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort_by_key(|s| s.0);
        Self { symbols }
    }

    /// Reads and parses a kallsyms file.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// The symbol containing `addr` (the last one at or below it).
    pub fn symbol(&self, addr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|s| s.0 <= addr);
        (i > 0).then(|| self.symbols[i - 1].1.as_str())
    }

    /// The address of symbol `name`.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|s| s.1 == name).map(|s| s.0)
    }

    /// True when no symbol has an address (unprivileged reader or empty file).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let k = Kallsyms::parse("ffffffff81000000 T _text\nffffffff81000100 t do_thing\n0000000000000000 T hidden\nffffffff81000200 T other\tmod\n");
        assert_eq!(k.symbol(0xffffffff81000150), Some("do_thing"));
        assert_eq!(k.symbol(0xffffffff81000200), Some("other"));
        assert_eq!(k.symbol(0x10), None);
        assert_eq!(k.address("other"), Some(0xffffffff81000200));
        assert_eq!(k.address("hidden"), None);
        assert!(Kallsyms::parse("0000000000000000 T x\n").is_empty());
    }
}
