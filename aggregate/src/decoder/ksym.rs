//! `ksym` (a kernel address as its function name) and `kstack` (an array of kernel
//! addresses as newline-separated function names).

use std::sync::Arc;

use super::{kallsyms::Kallsyms, DecodeError, Decoder};

/// Function name of a kernel address, `unknown_addr:0x<hex>` when none.
#[derive(Debug)]
pub struct Ksym(pub Arc<Kallsyms>);

impl Decoder for Ksym {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let raw: [u8; 8] = input.try_into().map_err(|_| {
            DecodeError::Invalid(format!(
                "ksym needs an 8 byte address, got {} bytes",
                input.len()
            ))
        })?;
        let addr = u64::from_ne_bytes(raw);
        Ok(match self.0.symbol(addr) {
            Some(s) => s.as_bytes().to_vec(),
            None => format!("unknown_addr:0x{addr:x}").into_bytes(),
        })
    }
}

/// A stack of kernel addresses (ends at the first zero) as function names, `??` for
/// addresses without one.
#[derive(Debug)]
pub struct Kstack(pub Arc<Kallsyms>);

impl Decoder for Kstack {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if !input.len().is_multiple_of(8) {
            return Err(DecodeError::Invalid(format!(
                "kstack needs a multiple of 8 bytes, got {}",
                input.len()
            )));
        }
        let frames: Vec<&str> = input
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .take_while(|&a| a != 0)
            .map(|a| self.0.symbol(a).unwrap_or("??"))
            .collect();
        Ok(frames.join("\n").into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms() -> Arc<Kallsyms> {
        Arc::new(Kallsyms::parse(
            "ffffffff81000000 T _text\nffffffff81000100 t do_thing\n",
        ))
    }

    #[test]
    fn ksym() {
        let d = Ksym(syms());
        assert_eq!(
            d.decode(&0xffffffff81000104u64.to_ne_bytes()).unwrap(),
            b"do_thing"
        );
        assert_eq!(d.decode(&5u64.to_ne_bytes()).unwrap(), b"unknown_addr:0x5");
        assert!(d.decode(&[1, 2, 3, 4]).is_err());
    }

    #[test]
    fn kstack() {
        let d = Kstack(syms());
        let mut stack = Vec::new();
        for a in [
            0xffffffff81000104u64,
            0xffffffff81000001,
            1,
            0,
            0xffffffff81000104,
        ] {
            stack.extend(a.to_ne_bytes());
        }
        assert_eq!(d.decode(&stack).unwrap(), b"do_thing\n_text\n??");
        assert_eq!(d.decode(&[]).unwrap(), b"");
        assert!(d.decode(&[0; 7]).is_err());
    }
}
