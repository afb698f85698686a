//! The CRI container log format: `TIMESTAMP STREAM P|F CONTENT\n`, lines split at 16 KiB.
//!
//! Every record is `2006-01-02T15:04:05.000000000Z stdout F content`: an RFC 3339 timestamp in
//! UTC with nanoseconds, the stream, `F` for a full line (the newline is not part of the
//! content) or `P` for a partial one (a 16 KiB chunk of a longer line, or what was left
//! unterminated when the stream ended), then the content. kubelet reassembles `P` records.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record (as containerd's default `max_container_log_line_size`).
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Where timestamps come from (a fixed clock in tests).
pub trait Clock {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 with nanoseconds in UTC: `2024-02-29T23:59:59.000000001Z` (always 30 bytes for
/// years 0..=9999). Times before 1970 are clamped to the epoch.
pub fn format_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Cuts a byte stream into records of at most `max` content bytes.
///
/// A line is emitted as one `F` record when it fits in `max` bytes, otherwise as `P` records of
/// `max` bytes followed by an `F` record with the rest; an unterminated tail is held back until
/// its newline arrives or the stream ends ([`LineSplitter::finish`] emits it as `P`). A line of
/// exactly `max` bytes is one `F` record.
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        assert!(max > 0);
        LineSplitter {
            pending: Vec::new(),
            max,
        }
    }

    /// Feed bytes; `emit(content, full)` is called for every finished record, in order.
    pub fn push(&mut self, data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        let max = self.max;
        let mut emit_from = |buf: &[u8]| -> usize {
            let mut start = 0;
            loop {
                let rest = &buf[start..];
                // A newline within max+1 bytes ends a record of at most max bytes.
                let window = &rest[..rest.len().min(max + 1)];
                match window.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        emit(&rest[..i], true);
                        start += i + 1;
                    }
                    None if rest.len() > max => {
                        emit(&rest[..max], false);
                        start += max;
                    }
                    None => return start,
                }
            }
        };
        if self.pending.is_empty() {
            // Fast path: records straight from the caller's buffer; keep only the tail.
            let used = emit_from(data);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = emit_from(&self.pending);
            self.pending.drain(..used);
        }
    }

    /// The stream ended: emit what is left as `P` records.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        for chunk in self.pending.chunks(self.max) {
            emit(chunk, false);
        }
        self.pending = Vec::new();
    }

    /// Bytes held back waiting for a newline.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Append one record to `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    timestamp: &str,
    stream: Stream,
    full: bool,
    content: &[u8],
) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Where records go: the log file, reopenable.
pub trait LogSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn reopen(&mut self) -> io::Result<()>;
}

/// The container's log file, opened `O_WRONLY|O_APPEND|O_CREAT`, mode 0640.
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(FileSink {
            path: path.to_owned(),
            file: Self::open_file(path)?,
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
    }
}

impl LogSink for FileSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn reopen(&mut self) -> io::Result<()> {
        // Open the new file before dropping the old one: on failure logging continues into the
        // old (renamed) file instead of stopping.
        self.file = Self::open_file(&self.path)?;
        Ok(())
    }
}

/// Turns container output into CRI records in a [`LogSink`].
pub struct CriLogWriter<S, C> {
    sink: S,
    clock: C,
    splitters: [LineSplitter; 2],
    scratch: Vec<u8>,
}

impl<S: LogSink, C: Clock> CriLogWriter<S, C> {
    pub fn new(sink: S, clock: C) -> Self {
        CriLogWriter {
            sink,
            clock,
            splitters: [LineSplitter::new(MAX_RECORD), LineSplitter::new(MAX_RECORD)],
            scratch: Vec::new(),
        }
    }

    /// Output read from `stream`: finished records are written at once with the current time.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let timestamp = format_timestamp(self.clock.now());
        let scratch = &mut self.scratch;
        self.splitters[stream.index()].push(data, &mut |content, full| {
            encode_record(scratch, &timestamp, stream, full, content)
        });
        self.flush()
    }

    /// `stream` reached end of file: its unterminated tail becomes a `P` record.
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let timestamp = format_timestamp(self.clock.now());
        let scratch = &mut self.scratch;
        self.splitters[stream.index()]
            .finish(&mut |content, full| encode_record(scratch, &timestamp, stream, full, content));
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.scratch.is_empty() {
            return Ok(());
        }
        let result = self.sink.write_all(&self.scratch);
        self.scratch.clear();
        if self.scratch.capacity() > 4 * MAX_RECORD {
            self.scratch.shrink_to(MAX_RECORD);
        }
        result
    }

    pub fn reopen(&mut self) -> io::Result<()> {
        self.sink.reopen()
    }

    #[cfg(test)]
    pub fn sink(&self) -> &S {
        &self.sink
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;

    fn ts(secs: u64, nanos: u32) -> String {
        format_timestamp(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn timestamps() {
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(ts(1, 1), "1970-01-01T00:00:01.000000001Z");
        // leap day, end of day
        assert_eq!(
            ts(1_709_251_199, 999_999_999),
            "2024-02-29T23:59:59.999999999Z"
        );
        assert_eq!(ts(1_709_251_200, 0), "2024-03-01T00:00:00.000000000Z");
        // century non-leap and 400-year leap
        assert_eq!(ts(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(ts(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(
            ts(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(ts(253_402_300_799, 0), "9999-12-31T23:59:59.000000000Z");
        // before the epoch: clamped
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn civil_dates_match_day_counting() {
        // walk day by day from 1970 across several leap cycles
        let days_in_month = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for day in 0..(200 * 366) {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    fn split(max: usize, chunks: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit =
            |c: &[u8], full: bool| out.push((String::from_utf8(c.to_vec()).unwrap(), full));
        for c in chunks {
            s.push(c, &mut emit);
        }
        if finish {
            s.finish(&mut emit);
        }
        out
    }

    fn rec(s: &str, full: bool) -> (String, bool) {
        (s.to_owned(), full)
    }

    #[test]
    fn full_lines() {
        assert_eq!(
            split(16, &[b"a\nbb\n\nccc\n"], false),
            vec![
                rec("a", true),
                rec("bb", true),
                rec("", true),
                rec("ccc", true)
            ]
        );
    }

    #[test]
    fn lines_across_reads() {
        assert_eq!(
            split(16, &[b"hel", b"lo\nwor", b"ld", b"\n"], false),
            vec![rec("hello", true), rec("world", true)]
        );
    }

    #[test]
    fn long_lines_are_split_at_max() {
        assert_eq!(
            split(4, &[b"abcdefghij\n"], false),
            vec![rec("abcd", false), rec("efgh", false), rec("ij", true)]
        );
        // the same across many small reads
        let bytes = b"abcdefghij\n";
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            split(4, &chunks, false),
            vec![rec("abcd", false), rec("efgh", false), rec("ij", true)]
        );
    }

    #[test]
    fn exact_multiples_of_max_end_with_a_full_record() {
        assert_eq!(split(4, &[b"abcd\n"], false), vec![rec("abcd", true)]);
        assert_eq!(split(4, &[b"abcd", b"\n"], false), vec![rec("abcd", true)]);
        assert_eq!(
            split(4, &[b"abcdefgh\n"], false),
            vec![rec("abcd", false), rec("efgh", true)]
        );
        // a full chunk without newline waits for the next byte
        let mut s = LineSplitter::new(4);
        let mut n = 0;
        s.push(b"abcd", &mut |_, _| n += 1);
        assert_eq!((n, s.pending()), (0, 4));
    }

    #[test]
    fn unterminated_tail_is_partial_at_eof() {
        assert_eq!(
            split(16, &[b"done\nno newline"], true),
            vec![rec("done", true), rec("no newline", false)]
        );
        assert_eq!(
            split(4, &[b"abcdef"], true),
            vec![rec("abcd", false), rec("ef", false)]
        );
        assert_eq!(split(4, &[b"abcd"], true), vec![rec("abcd", false)]);
        assert_eq!(split(4, &[b""], true), vec![]);
    }

    #[test]
    fn binary_content_passes_through() {
        let mut s = LineSplitter::new(8);
        let mut out = Vec::new();
        s.push(b"\x00\xff\r\t\n", &mut |c: &[u8], f| {
            out.push((c.to_vec(), f))
        });
        assert_eq!(out, vec![(b"\x00\xff\r\t".to_vec(), true)]);
    }

    #[test]
    fn sixteen_kib_records() {
        let line = vec![b'x'; 40 * 1024];
        let mut data = line.clone();
        data.push(b'\n');
        let mut sizes = Vec::new();
        let mut s = LineSplitter::new(MAX_RECORD);
        // arbitrary read sizes
        for chunk in data.chunks(3000) {
            s.push(chunk, &mut |c: &[u8], f| sizes.push((c.len(), f)));
        }
        assert_eq!(
            sizes,
            vec![(16384, false), (16384, false), (40 * 1024 - 32768, true)]
        );
    }

    struct MemSink {
        files: Vec<Vec<u8>>,
    }

    impl LogSink for MemSink {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.files.last_mut().unwrap().extend_from_slice(buf);
            Ok(())
        }
        fn reopen(&mut self) -> io::Result<()> {
            self.files.push(Vec::new());
            Ok(())
        }
    }

    struct StepClock(Cell<u64>);

    impl Clock for StepClock {
        fn now(&self) -> SystemTime {
            let n = self.0.get();
            self.0.set(n + 1);
            UNIX_EPOCH + Duration::new(1_700_000_000 + n, 5)
        }
    }

    #[test]
    fn writer_formats_interleaved_streams() {
        let mut w = CriLogWriter::new(
            MemSink {
                files: vec![Vec::new()],
            },
            StepClock(Cell::new(0)),
        );
        w.write(Stream::Stdout, b"hello\npart").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"ial\n").unwrap();
        w.write(Stream::Stdout, b"tail").unwrap();
        w.finish(Stream::Stdout).unwrap();
        w.finish(Stream::Stderr).unwrap();
        let text = String::from_utf8(w.sink().files[0].clone()).unwrap();
        assert_eq!(
            text,
            "2023-11-14T22:13:20.000000005Z stdout F hello\n\
             2023-11-14T22:13:21.000000005Z stderr F err\n\
             2023-11-14T22:13:22.000000005Z stdout F partial\n\
             2023-11-14T22:13:24.000000005Z stdout P tail\n"
        );
    }

    #[test]
    fn writer_reopen_switches_files() {
        let mut w = CriLogWriter::new(
            MemSink {
                files: vec![Vec::new()],
            },
            StepClock(Cell::new(0)),
        );
        w.write(Stream::Stdout, b"one\n").unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"two\n").unwrap();
        let files: Vec<String> = w
            .sink()
            .files
            .iter()
            .map(|f| String::from_utf8(f.clone()).unwrap())
            .collect();
        assert!(files[0].ends_with(" stdout F one\n"), "{files:?}");
        assert!(files[1].ends_with(" stdout F two\n"), "{files:?}");
    }

    #[test]
    fn file_sink_appends_and_reopens() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, b"existing\n").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        sink.write_all(b"a\n").unwrap();
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        sink.write_all(b"b\n").unwrap();
        sink.reopen().unwrap();
        sink.write_all(b"c\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log.1")).unwrap(),
            "existing\na\nb\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    }
}
