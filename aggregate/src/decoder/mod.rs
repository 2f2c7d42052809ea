//! Label decoders: raw field bytes → label value, chained as configured.
//!
//! Each decoder takes the previous one's output (the field's bytes for the first) and
//! returns bytes; the last output is the label value. They run once per new series,
//! never per event, so they may allocate.

mod inet_subnet;
mod static_map;
mod string;
mod uint;

use crate::{config::DecoderConfig, invalid, ConfigError};

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input does not fit the decoder (wrong size, bad encoding).
    #[error("{0}")]
    Invalid(String),
    /// The decoder drops this value by design (e.g. `static_map` without the key).
    #[error("dropped")]
    Dropped,
}

/// One decoding step.
pub trait Decoder: Send + Sync + std::fmt::Debug {
    /// Decodes `input`.
    ///
    /// # Errors
    /// The input does not fit, or the decoder drops it.
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError>;
}

/// A label's decoder chain.
#[derive(Debug)]
pub struct Chain(Vec<Box<dyn Decoder>>);

impl Chain {
    /// Builds the chain for a label of `size` bytes; no decoders means `uint`.
    ///
    /// # Errors
    /// An unknown decoder or one that cannot take `size` bytes, named by `at`.
    pub fn build(configs: &[DecoderConfig], size: usize, at: &str) -> Result<Self, ConfigError> {
        let default = [DecoderConfig {
            name: "uint".into(),
            static_map: Default::default(),
            allow_unknown: false,
        }];
        let configs = if configs.is_empty() { &default[..] } else { configs };
        let mut chain: Vec<Box<dyn Decoder>> = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("{at}.decoders[{i}]");
            let first = i == 0;
            let d: Box<dyn Decoder> = match c.name.as_str() {
                "uint" => {
                    if first && !matches!(size, 1 | 2 | 4 | 8) {
                        return Err(invalid(format!("{at}.name"), format!("uint needs a 1, 2, 4 or 8 byte field, not {size}")));
                    }
                    Box::new(uint::Uint)
                }
                "hex" => Box::new(uint::Hex),
                "string" => Box::new(string::CString),
                "inet_subnet" => {
                    if first && size != 4 {
                        return Err(invalid(format!("{at}.name"), format!("inet_subnet needs a 4 byte field (family u16, 2 address bytes), not {size}")));
                    }
                    Box::new(inet_subnet::InetSubnet)
                }
                "static_map" => Box::new(static_map::StaticMap::new(&c.static_map, c.allow_unknown)),
                other => {
                    return Err(invalid(
                        format!("{at}.name"),
                        format!("unknown decoder {other:?}; known: uint, hex, string, inet_subnet, static_map"),
                    ))
                }
            };
            chain.push(d);
        }
        Ok(Self(chain))
    }

    /// Runs the chain; the result must be UTF-8.
    ///
    /// # Errors
    /// A step fails or drops the value, or the result is not UTF-8.
    pub fn decode(&self, input: &[u8]) -> Result<String, DecodeError> {
        let mut value = input.to_vec();
        for d in &self.0 {
            value = d.decode(&value)?;
        }
        String::from_utf8(value).map_err(|_| DecodeError::Invalid("label value is not UTF-8".into()))
    }
}
