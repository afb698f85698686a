//! The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1)
//! that primes the zlib compressor and decompressor of every connection direction.
//!
//! The spec's dictionary is a run of header names (and a few common values), each preceded by its
//! length as a 32-bit big-endian integer, followed by one unprefixed string of common status
//! codes, dates and media types. It is built here from that structure at compile time; the tests
//! pin its length (1423), its Adler-32 (the zlib dictionary id) and its SHA-256.

/// The length-prefixed entries, in spec order.
const WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The unprefixed tail, split only to keep lines short (the pieces are concatenated verbatim).
const TAIL: [&str; 9] = [
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
];

/// Length of the dictionary in bytes.
pub(crate) const DICTIONARY_LEN: usize = dictionary_len();

/// The dictionary bytes.
pub(crate) static DICTIONARY: [u8; DICTIONARY_LEN] = build();

/// Adler-32 of [`DICTIONARY`]: the DICTID a zlib stream primed with it carries in its header.
pub(crate) const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

const fn dictionary_len() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < WORDS.len() {
        n += 4 + WORDS[i].len();
        i += 1;
    }
    let mut t = 0;
    while t < TAIL.len() {
        n += TAIL[t].len();
        t += 1;
    }
    n
}

const fn put(out: &mut [u8; DICTIONARY_LEN], mut pos: usize, bytes: &[u8]) -> usize {
    let mut j = 0;
    while j < bytes.len() {
        out[pos] = bytes[j];
        pos += 1;
        j += 1;
    }
    pos
}

const fn build() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut pos = 0;
    let mut i = 0;
    while i < WORDS.len() {
        let word = WORDS[i].as_bytes();
        pos = put(&mut out, pos, &(word.len() as u32).to_be_bytes());
        pos = put(&mut out, pos, word);
        i += 1;
    }
    let mut t = 0;
    while t < TAIL.len() {
        pos = put(&mut out, pos, TAIL[t].as_bytes());
        t += 1;
    }
    out
}
