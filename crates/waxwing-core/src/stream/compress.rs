//! XEP-0138 stream compression: zlib (RFC 1950), with a sync flush after
//! every write so each stanza can be decoded as soon as it arrives.
//!
//! Inflation is bounded: the output may not exceed `max_ratio` times the
//! input plus [`SLACK`] over the life of the stream, so a small input that
//! expands to gigabytes (a "zip bomb") ends the stream with
//! `policy-violation` instead of filling memory. The framer's own limits
//! (stanza size) apply to the inflated bytes as usual.
//!
//! See SECURITY.md, "Stream compression", for why this is off by default.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// XEP-0138 protocol namespace (`<compress/>`, `<compressed/>`, `<failure/>`).
pub const NS: &str = "http://jabber.org/protocol/compress";
/// XEP-0138 stream feature namespace.
pub const FEATURE_NS: &str = "http://jabber.org/features/compress";

/// The stream feature: zlib only.
pub fn feature() -> waxwing_proto::xml::Element {
    use waxwing_proto::xml::Element;
    Element::new("compression", FEATURE_NS)
        .with_child(Element::new("method", FEATURE_NS).with_text("zlib"))
}

/// `<failure><condition/></failure>`.
pub fn failure(condition: &str) -> waxwing_proto::xml::Element {
    use waxwing_proto::xml::Element;
    Element::new("failure", NS).with_child(Element::new(condition, NS))
}

/// Inflated bytes allowed on top of `max_ratio` × compressed bytes, so the
/// first stanzas of a stream (which compress well against nothing) pass.
pub const SLACK: u64 = 256 * 1024;

/// Compresses outgoing data.
pub struct Deflater {
    z: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        Deflater {
            z: Compress::new(Compression::default(), true),
        }
    }

    /// Appends `data`, compressed and sync-flushed, to `out`: the peer can
    /// inflate all of `data` from what was written so far.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut input = data;
        loop {
            out.reserve(input.len() / 2 + 64);
            let before = self.z.total_in();
            let status = self
                .z
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("deflate into a Vec cannot fail");
            input = &input[(self.z.total_in() - before) as usize..];
            // Done when everything was consumed and the flush did not run
            // out of room (zlib then leaves spare capacity).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if status == Status::StreamEnd {
                break;
            }
        }
    }
}

/// Why inflating failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not a zlib stream (XEP-0138 `<setup-failed/>`-like: the stream ends).
    Corrupt,
    /// The output grew past the allowed ratio: a decompression bomb.
    TooLarge,
}

/// Inflates incoming data, within a ratio bound.
pub struct Inflater {
    z: Decompress,
    max_ratio: u64,
}

impl Inflater {
    pub fn new(max_ratio: u64) -> Self {
        Inflater {
            z: Decompress::new(true),
            max_ratio,
        }
    }

    fn allowed(&self) -> u64 {
        self.z
            .total_in()
            .saturating_mul(self.max_ratio)
            .saturating_add(SLACK)
    }

    /// Appends the inflation of `data` to `out`.
    pub fn decompress(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        let mut input = data;
        loop {
            out.reserve(4096.max(input.len() * 4));
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            input = &input[(self.z.total_in() - in0) as usize..];
            if self.z.total_out() > self.allowed() {
                return Err(InflateError::TooLarge);
            }
            let progressed = self.z.total_in() != in0 || self.z.total_out() != out0;
            if status == Status::StreamEnd {
                return Ok(());
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            if !progressed && out.len() < out.capacity() {
                // Needs more input than we have.
                return Ok(());
            }
        }
    }
}

/// A byte stream under XEP-0138 zlib: every write is compressed and
/// sync-flushed; reads are inflated within the ratio bound. Used by c2s
/// (`Transport::Compressed`) and s2s (`S2sIo::Compressed`).
pub struct ZlibStream<T> {
    pub(crate) inner: T,
    deflater: Deflater,
    inflater: Inflater,
    /// Inflated bytes not yet handed to the reader.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Compressed bytes not yet written to `inner`.
    pending: Vec<u8>,
    pending_pos: usize,
}

/// The error a read returns when inflating exceeded the ratio bound.
#[derive(Debug)]
pub struct DecompressionBomb;

impl std::fmt::Display for DecompressionBomb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("compressed data inflates beyond the allowed ratio")
    }
}

impl std::error::Error for DecompressionBomb {}

/// True when a read failed because the peer sent a decompression bomb.
pub fn is_decompression_bomb(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<DecompressionBomb>())
}

impl<T: AsyncRead + AsyncWrite + Unpin> ZlibStream<T> {
    pub fn new(inner: T, max_ratio: u64) -> Self {
        ZlibStream {
            inner,
            deflater: Deflater::new(),
            inflater: Inflater::new(max_ratio),
            plain: Vec::new(),
            plain_pos: 0,
            pending: Vec::new(),
            pending_pos: 0,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_pos < self.pending.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_pos..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_pos += n;
        }
        self.pending.clear();
        self.pending_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ZlibStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let c = self.get_mut();
        loop {
            if c.plain_pos < c.plain.len() {
                let n = buf.remaining().min(c.plain.len() - c.plain_pos);
                buf.put_slice(&c.plain[c.plain_pos..c.plain_pos + n]);
                c.plain_pos += n;
                if c.plain_pos == c.plain.len() {
                    c.plain.clear();
                    c.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut c.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Ok(())); // EOF
            }
            match c.inflater.decompress(rb.filled(), &mut c.plain) {
                Ok(()) => {}
                Err(InflateError::TooLarge) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        DecompressionBomb,
                    )));
                }
                Err(InflateError::Corrupt) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not a zlib stream",
                    )));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ZlibStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let c = self.get_mut();
        // One sync flush per write: the peer can inflate each stanza as
        // soon as it arrives.
        ready!(c.poll_drain(cx))?;
        c.deflater.compress(buf, &mut c.pending);
        // Start sending now; the rest goes out on flush or the next write.
        if let Poll::Ready(Err(e)) = c.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let c = self.get_mut();
        ready!(c.poll_drain(cx))?;
        Pin::new(&mut c.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let c = self.get_mut();
        ready!(c.poll_drain(cx))?;
        Pin::new(&mut c.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random source (xorshift) for ids and text.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn hex(&mut self, n: usize) -> String {
            (0..n).map(|_| format!("{:x}", self.next() % 16)).collect()
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// 200 stanzas of an ordinary chat session between two people: chat
    /// messages with receipts, chat states, markers and unique ids (random,
    /// as clients make them), receipts, presence with caps, pings. Message
    /// bodies are made of varied words and never repeat, so the measure is
    /// not flattered by a transcript that repeats itself.
    pub(crate) fn transcript() -> Vec<String> {
        const WORDS: [&str; 64] = [
            "the",
            "build",
            "failed",
            "again",
            "on",
            "main",
            "did",
            "you",
            "see",
            "flaky",
            "federation",
            "test",
            "no",
            "real",
            "one",
            "this",
            "time",
            "migration",
            "numbering",
            "clashed",
            "I'll",
            "have",
            "a",
            "look",
            "after",
            "standup",
            "thanks",
            "are",
            "we",
            "still",
            "for",
            "Thursday",
            "sure",
            "7pm",
            "at",
            "usual",
            "place",
            "perfect",
            "bring",
            "board",
            "game",
            "see",
            "then",
            "lunch",
            "was",
            "great",
            "coffee",
            "later",
            "maybe",
            "tomorrow",
            "meeting",
            "moved",
            "to",
            "Friday",
            "ok",
            "cool",
            "haha",
            "yes",
            "what",
            "about",
            "release",
            "notes",
            "ship",
            "it",
        ];
        const SHOW: [&str; 4] = ["away", "chat", "dnd", "xa"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        for i in 0..200 {
            let (from, to) = if rng.next().is_multiple_of(2) {
                ("juliet@capulet.example/balcony", "romeo@montague.example")
            } else {
                (
                    "romeo@montague.example/orchard-Xk3f",
                    "juliet@capulet.example",
                )
            };
            out.push(match i % 10 {
                0 => format!(
                    "<presence from='{from}' xml:lang='en'><show>{}</show><status>{} {}</status>\
                     <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' \
                     ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/><priority>5</priority></presence>",
                    rng.pick(&SHOW),
                    rng.pick(&WORDS),
                    rng.pick(&WORDS)
                ),
                5 => format!(
                    "<iq type='get' from='{from}' to='{to}' id='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                    rng.hex(12)
                ),
                3 | 7 => format!(
                    "<message from='{from}' to='{to}' id='{}'><received xmlns='urn:xmpp:receipts' \
                     id='{}'/></message>",
                    rng.hex(16),
                    rng.hex(16)
                ),
                _ => {
                    let n = 3 + (rng.next() % 14) as usize;
                    let body: Vec<&str> = (0..n).map(|_| rng.pick(&WORDS)).collect();
                    format!(
                        "<message from='{from}' to='{to}' type='chat' id='{}' xml:lang='en'>\
                         <body>{}</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
                         <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/>\
                         <origin-id xmlns='urn:xmpp:sid:0' id='{}-{}-{}-{}-{}'/>\
                         <stanza-id xmlns='urn:xmpp:sid:0' by='juliet@capulet.example' id='{}'/></message>",
                        rng.hex(16),
                        body.join(" "),
                        rng.hex(8),
                        rng.hex(4),
                        rng.hex(4),
                        rng.hex(4),
                        rng.hex(12),
                        rng.hex(16)
                    )
                }
            });
        }
        out
    }

    #[test]
    fn round_trip_stanza_by_stanza() {
        let mut d = Deflater::new();
        let mut i = Inflater::new(100);
        for s in transcript() {
            let mut wire = Vec::new();
            d.compress(s.as_bytes(), &mut wire);
            // Each flush can be inflated on its own, even byte by byte.
            let mut back = Vec::new();
            for b in &wire {
                i.decompress(std::slice::from_ref(b), &mut back).unwrap();
            }
            assert_eq!(back, s.as_bytes());
        }
    }

    #[test]
    fn measured_savings_on_a_chat_transcript() {
        let t = transcript();
        assert_eq!(t.len(), 200);
        let mut d = Deflater::new();
        let (mut raw, mut wire) = (0usize, 0usize);
        for s in &t {
            let mut out = Vec::new();
            d.compress(s.as_bytes(), &mut out);
            raw += s.len();
            wire += out.len();
        }
        let saved = 100.0 * (1.0 - wire as f64 / raw as f64);
        // For comparison: the whole transcript compressed in one go (what
        // "up to 90%" figures usually measure; a server cannot hold stanzas back).
        let mut whole = Vec::new();
        Deflater::new().compress(t.concat().as_bytes(), &mut whole);
        println!(
            "one flush for the whole transcript instead: {raw} -> {} bytes, {:.1}% saved",
            whole.len(),
            100.0 * (1.0 - whole.len() as f64 / raw as f64)
        );
        println!(
            "XEP-0138 on {} stanzas with a sync flush each: {raw} bytes -> {wire} bytes, \
             ratio {:.2}:1, {saved:.1}% saved",
            t.len(),
            raw as f64 / wire as f64
        );
        // Well short of the 90% claimed for whole-stream compression, but real.
        assert!(saved > 50.0, "{saved}");
    }

    #[test]
    fn zip_bomb_is_refused() {
        // 64 MiB of spaces compresses to about 64 KiB.
        let mut d = Deflater::new();
        let mut bomb = Vec::new();
        d.compress(&vec![b' '; 64 << 20], &mut bomb);
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let mut i = Inflater::new(100);
        let mut out = Vec::new();
        let mut result = Ok(());
        for chunk in bomb.chunks(4096) {
            result = i.decompress(chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(InflateError::TooLarge));
        // Stopped within the bound, long before 64 MiB.
        assert!(
            (out.len() as u64) < 100 * bomb.len() as u64 + SLACK + (1 << 20),
            "{}",
            out.len()
        );
    }

    #[test]
    fn garbage_is_refused() {
        let mut i = Inflater::new(100);
        let mut out = Vec::new();
        assert_eq!(
            i.decompress(b"<message>not zlib</message>", &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
