//! The worker's wire format: length-prefixed frames over the child's stdin/stdout.
//!
//! A frame is `u32 length (LE)` then `length` bytes: one tag byte and the payload. Numbers are
//! little-endian; strings and byte strings are `u32 length` + bytes; float vectors are
//! `u32 count` + raw f32 bytes (lossless, no text formatting); small structured values
//! (model info, build info, tensor headers, options) are JSON byte strings.
//! A response is tag [`OK`] with the request's result, or [`ERR`] with a message.

use std::io::{self, Read, Write};

/// Bumped on any change of the format; both sides check it in `Hello`.
pub const PROTOCOL_VERSION: u32 = 5;

/// Frames larger than this are refused (a corrupt length would otherwise allocate wildly).
/// 1 GiB covers a batch of 2048 positions × 128256 logits.
pub const MAX_FRAME: u32 = 1 << 30;

pub const OK: u8 = 0;
pub const ERR: u8 = 1;

/// Request tags.
pub mod tag {
    /// Version 5: `LOAD_MODEL` carries `n_ubatch` after `n_threads`; `EVAL_BATCH` answers
    /// with the worker's compute time (`u32` µs) before the logits; `EVAL_BATCH_CAPTURE`.
    ///
    /// `u32` protocol version, `u8` library choice: 0 default, 1 built, 2 a folder (then its
    /// path), 3 the build for a `-march` (then that value).
    pub const HELLO: u8 = 1;
    pub const LOAD_MODEL: u8 = 2;
    pub const MODEL_INFO: u8 = 3;
    pub const TOKENIZE: u8 = 4;
    pub const DETOKENIZE: u8 = 5;
    pub const TOKEN_PIECE: u8 = 6;
    pub const EVAL_TOKEN: u8 = 7;
    pub const EVAL_BATCH: u8 = 8;
    pub const EVAL_CAPTURE: u8 = 9;
    pub const RESET: u8 = 10;
    pub const LIST_TENSORS: u8 = 11;
    pub const DEQUANTIZE: u8 = 12;
    pub const QUANTIZE: u8 = 13;
    pub const SHUTDOWN: u8 = 14;
    /// Several strings in one round trip (a corpus check is hundreds of them).
    pub const TOKENIZE_MANY: u8 = 15;
    /// A batch (logits at every position) with the graph nodes a filter selects (since 5).
    pub const EVAL_BATCH_CAPTURE: u8 = 16;
}

/// Write one frame and flush.
pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len() + 1)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&[tag])?;
    w.write_all(payload)?;
    w.flush()
}

/// Read one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    let mut buf = vec![0u8; len as usize - 1];
    r.read_exact(&mut buf)?;
    let tag = tag[0];
    Ok(Some((tag, buf)))
}

/// Builds a payload.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Enc {
        Enc(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Enc {
        self.0.push(v);
        self
    }
    pub fn bool(self, v: bool) -> Enc {
        self.u8(v as u8)
    }
    pub fn u32(mut self, v: u32) -> Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Enc {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Enc {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(self, v: &str) -> Enc {
        self.bytes(v.as_bytes())
    }
    pub fn json<T: serde::Serialize>(self, v: &T) -> Enc {
        let text = serde_json::to_vec(v).unwrap_or_default();
        self.bytes(&text)
    }
    pub fn i32s(mut self, v: &[i32]) -> Enc {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.reserve(v.len() * 4);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
    pub fn f32s(mut self, v: &[f32]) -> Enc {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.reserve(v.len() * 4);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
}

/// Reads a payload; every read names what was expected on failure.
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!("payload ends before {what} ({} of {n} bytes)", self.buf.len()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    pub fn bool(&mut self, what: &str) -> Result<bool, String> {
        Ok(self.u8(what)? != 0)
    }
    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(self.u32(what)? as i32)
    }
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    pub fn str(&mut self, what: &str) -> Result<String, String> {
        String::from_utf8(self.bytes(what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    pub fn json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, String> {
        serde_json::from_slice(self.bytes(what)?).map_err(|e| format!("{what}: {e}"))
    }
    pub fn i32s(&mut self, what: &str) -> Result<Vec<i32>, String> {
        let n = self.u32(what)? as usize;
        let b = self.take(n.checked_mul(4).ok_or("count overflow")?, what)?;
        Ok(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    pub fn f32s(&mut self, what: &str) -> Result<Vec<f32>, String> {
        let n = self.u32(what)? as usize;
        let b = self.take(n.checked_mul(4).ok_or("count overflow")?, what)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    pub fn finish(&self, what: &str) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes after {what}", self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_floats_round_trip_bit_exactly() {
        let floats = [0.0f32, -0.0, 1.5, f32::MIN_POSITIVE, f32::NAN, f32::INFINITY, 1e-45];
        let payload = Enc::new().u32(7).i32(-3).str("héllo").f32s(&floats).i32s(&[1, -2]).0;
        let mut wire = Vec::new();
        write_frame(&mut wire, tag::EVAL_TOKEN, &payload).unwrap();
        let (t, p) = read_frame(&mut wire.as_slice()).unwrap().unwrap();
        assert_eq!(t, tag::EVAL_TOKEN);
        let mut d = Dec::new(&p);
        assert_eq!(d.u32("a").unwrap(), 7);
        assert_eq!(d.i32("b").unwrap(), -3);
        assert_eq!(d.str("c").unwrap(), "héllo");
        let back = d.f32s("d").unwrap();
        assert_eq!(back.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), floats.map(f32::to_bits).to_vec());
        assert_eq!(d.i32s("e").unwrap(), vec![1, -2]);
        d.finish("all").unwrap();
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
        assert!(read_frame(&mut [5u8, 0].as_slice()).is_err());
        assert!(read_frame(&mut [0u8, 0, 0, 0].as_slice()).is_err());
        let mut d = Dec::new(&[3, 0, 0, 0, 1]);
        assert!(d.f32s("logits").unwrap_err().contains("logits"));
    }
}
