//! Logging: the tracing subscriber (text or JSON) and the one access-log line per turn (spec §8).
//!
//! Writes go through a non-blocking, bounded buffer drained by one writer thread: a slow
//! terminal or log collector must never stall a dialog turn. When the buffer is full, lines are
//! dropped and counted, and the writer reports how many in a warning line, rather than blocking
//! the runtime.
//!
//! Why a buffer of bytes and not a queue of lines (as tracing-appender has): at tens of thousands
//! of turns a second, a queue costs one allocation per line and wakes the writer thread for
//! nearly every line, and the writer does one `write(2)` per line; on a gateway pinned to one
//! core those wake-ups and syscalls compete with the turns themselves. Here a line is a `memcpy`
//! under an uncontended lock, the writer is woken only when the buffer goes from empty to
//! non-empty, waits [`BATCH_DELAY`] for more lines, and writes them in one go.
//!
//! The access line in JSON is formatted directly (same keys and layout as the JSON layer
//! produces), which costs a fraction of building it through the generic field visitor.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::protocol::Masked;
use crate::record::TurnRecord;

/// Bytes the log buffer may hold before lines are dropped (about 64k access lines).
const LOG_BUFFER_MAX: usize = 16 * 1024 * 1024;
/// How long the writer lets lines gather after the first one arrives.
const BATCH_DELAY: Duration = Duration::from_millis(10);

/// How long dropping a [`LogGuard`] waits for the writer when [`LogGuard::finish`] was not
/// called.
const DEFAULT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Keep this alive for the life of the process: [`finish`](Self::finish) (or dropping it)
/// writes what is buffered and stops the writer thread, waiting a bounded time.
pub struct LogGuard {
    sink: LogSink,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogGuard {
    /// Write what is buffered, waiting at most `limit`: a log pipe nobody reads must not hold
    /// the exit. When the writer does not finish in time, what it still holds is dropped and
    /// that is said on stderr if stderr takes it without blocking. True when all was written.
    pub fn finish(mut self, limit: Duration) -> bool {
        self.stop(limit)
    }

    fn stop(&mut self, limit: Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let shared = &self.sink.shared;
        let end = tokio::time::Instant::now() + limit;
        let mut st = shared.lock();
        st.shutdown = true;
        shared.wake.notify_all();
        while !st.done {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let pending = st.buf.len() + st.writing;
                drop(st);
                let dropped = shared.dropped.load(Ordering::Relaxed);
                say_dropped_at_exit(pending, dropped, limit);
                // The thread stays blocked in its write; the process exit ends it.
                return false;
            }
            st = shared
                .finished
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        let _ = thread.join();
        true
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.stop(DEFAULT_FLUSH_LIMIT);
    }
}

/// The last word of a log that could not be flushed: straight to file descriptor 2, made
/// non-blocking first (std's stderr handle may be locked by the blocked writer thread).
fn say_dropped_at_exit(bytes: usize, lines: u64, limit: Duration) {
    let msg = format!(
        "graygate: the log output did not take the last {bytes} bytes within {limit:?} at exit (a pipe nobody reads?); they were dropped (and {lines} lines before them)\n"
    );
    #[cfg(unix)]
    {
        use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
        let fd = rustix::stdio::stderr();
        if let Ok(flags) = fcntl_getfl(fd) {
            let _ = fcntl_setfl(fd, flags | OFlags::NONBLOCK);
        }
        let _ = rustix::io::write(fd, msg.as_bytes());
    }
    #[cfg(not(unix))]
    {
        let _ = msg;
    }
}

struct State {
    buf: Vec<u8>,
    shutdown: bool,
    /// Bytes taken by the writer and not yet written.
    writing: usize,
    /// The writer thread has written everything and stopped.
    done: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled when the writer has stopped (`State::done`).
    finished: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The non-blocking log writer: cheap to clone, appends whole lines.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
    json: bool,
}

impl LogSink {
    /// Start the writer thread draining into `out`.
    pub fn start<W: Write + Send + 'static>(out: W, json: bool) -> (LogSink, LogGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 * 1024),
                shutdown: false,
                writing: 0,
                done: false,
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let sink = LogSink { shared, json };
        let worker = sink.clone();
        let thread = std::thread::Builder::new()
            .name("graygate-log".into())
            .spawn(move || worker.drain(out))
            .ok();
        (sink.clone(), LogGuard { sink, thread })
    }

    /// Append one or more whole lines; drops them (counted) when the buffer is full.
    pub fn append(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        if st.buf.len() + bytes.len() > LOG_BUFFER_MAX {
            drop(st);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = st.buf.is_empty();
        st.buf.extend_from_slice(bytes);
        drop(st);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    fn drain<W: Write>(self, mut out: W) {
        let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let shutdown = {
                let mut st = self.shared.lock();
                while st.buf.is_empty() && !st.shutdown {
                    st = self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.buf.is_empty() {
                    break;
                }
                st.shutdown
            };
            if !shutdown {
                std::thread::sleep(BATCH_DELAY);
            }
            {
                let mut st = self.shared.lock();
                std::mem::swap(&mut st.buf, &mut spare);
                st.writing = spare.len();
            }
            let _ = out.write_all(&spare);
            self.shared.lock().writing = 0;
            spare.clear();
            if spare.capacity() > 1024 * 1024 {
                spare.shrink_to(64 * 1024);
            }
            let dropped = self.shared.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let _ = out.write_all(self.dropped_line(dropped).as_bytes());
            }
            let _ = out.flush();
        }
        let _ = out.flush();
        self.shared.lock().done = true;
        self.shared.finished.notify_all();
    }

    fn dropped_line(&self, n: u64) -> String {
        let mut s = String::with_capacity(160);
        let msg = "the log buffer was full: lines dropped";
        if self.json {
            s.push_str("{\"timestamp\":\"");
            push_timestamp(&mut s, SystemTime::now());
            let _ = writeln!(
                s,
                "\",\"level\":\"WARN\",\"message\":\"{msg}\",\"dropped\":{n},\"target\":\"graygate::telemetry\"}}"
            );
        } else {
            push_timestamp(&mut s, SystemTime::now());
            let _ = writeln!(s, "  WARN graygate::telemetry: {msg} dropped={n}");
        }
        s
    }
}

/// One event's bytes go to the buffer in one append (the fmt layer writes each event once).
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;
    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter(self)
    }
}

/// The sink the access line is written to directly (JSON format only).
static ACCESS: OnceLock<LogSink> = OnceLock::new();

/// Install the global subscriber. `json`: `None` = JSON unless stderr is a terminal.
/// Filtering follows `RUST_LOG` (default `info`).
pub fn init(json: Option<bool>) -> Option<LogGuard> {
    let json = json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, guard) = LogSink::start(std::io::stderr(), json);
    let result = if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(sink.clone()),
            )
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            // Colour only on a terminal: escape codes in a file or a pipe are noise (and a
            // reader's terminal would run them).
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(sink.clone()),
            )
            .try_init()
    };
    match result {
        Ok(()) => {
            if json {
                let _ = ACCESS.set(sink);
            }
            Some(guard)
        }
        Err(_) => None,
    }
}

/// The access-log line of one turn.
pub fn access_log(rec: &TurnRecord) {
    if !tracing::enabled!(target: "graygate::access", tracing::Level::INFO) {
        return;
    }
    if let Some(sink) = ACCESS.get() {
        LINE.with(|cell| {
            let mut line = cell.take();
            line.clear();
            access_json(&mut line, rec, SystemTime::now());
            sink.append(line.as_bytes());
            if line.capacity() <= 16 * 1024 {
                cell.set(line);
            }
        });
        return;
    }
    // The text line: every value a client chose goes through `Text`, so it cannot split the
    // line, forge a field or reach the terminal as an escape sequence.
    let userid = rec
        .userid
        .as_deref()
        .map(|u| compact_str::format_compact!("{}", Masked(u)));
    tracing::info!(
        target: "graygate::access",
        request_id = %Text(&rec.request_id),
        method = %Text(rec.method.as_str()),
        path = %Text(&rec.path),
        client = rec.client.map(tracing::field::display),
        trace_id = rec.trace.map(|t| tracing::field::display(crate::trace::hex(&t.trace_id))),
        span_id = rec.trace.map(|t| tracing::field::display(crate::trace::hex(&t.span_id))),
        vdn = rec.vdn,
        userid = userid.as_deref().map(|u| tracing::field::display(Text(u))),
        inaction = rec.inaction.map(|i| i.0),
        rule = rec.rule.as_deref().map(|r| tracing::field::display(Text(r))),
        cluster = rec.cluster.as_deref().map(|c| tracing::field::display(Text(c))),
        endpoint = rec.endpoint.as_deref().map(|e| tracing::field::display(Text(e))),
        pin = rec.pin,
        status = rec.status,
        outaction = rec.outaction.map(|o| o.0),
        error = rec.error_code,
        fallback_from = rec.fallback_from.as_deref(),
        total_us = rec.total.as_micros() as u64,
        upstream_us = rec.upstream.map(|d| d.as_micros() as u64),
        "turn"
    );
}

/// A value for a text log line: control characters (C0, DEL, C1) escaped as `\n`, `\r`, `\t`
/// or `\u{..}`, and the whole value in double quotes (with `"` and `\` escaped) when it is
/// empty or holds a space, `"`, `=` or `\`, so one value can never look like two fields.
pub struct Text<'a>(pub &'a str);

impl std::fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let v = self.0;
        let quote = v.is_empty() || v.contains([' ', '"', '=', '\\']);
        let plain = !quote && !v.chars().any(char::is_control);
        if plain {
            return f.write_str(v);
        }
        if quote {
            f.write_char('"')?;
        }
        for c in v.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '"' if quote => f.write_str("\\\"")?,
                '\\' if quote => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        if quote {
            f.write_char('"')?;
        }
        Ok(())
    }
}

thread_local! {
    /// A reused line buffer per thread.
    static LINE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// The JSON access line, with the keys, order and value types of the JSON layer's output for
/// the `tracing::info!` above (absent values are left out, as the layer does).
fn access_json(s: &mut String, rec: &TurnRecord, now: SystemTime) {
    s.push_str("{\"timestamp\":\"");
    push_timestamp(s, now);
    s.push_str("\",\"level\":\"INFO\",\"message\":\"turn\"");
    str_field(s, "request_id", &rec.request_id);
    str_field(s, "method", rec.method.as_str());
    str_field(s, "path", &rec.path);
    if let Some(ip) = rec.client {
        let mut text = compact_str::CompactString::default();
        let _ = write!(text, "{ip}");
        str_field(s, "client", &text);
    }
    if let Some(t) = &rec.trace {
        str_field(s, "trace_id", &crate::trace::hex(&t.trace_id));
        str_field(s, "span_id", &crate::trace::hex(&t.span_id));
    }
    if let Some(v) = rec.vdn {
        num_field(s, "vdn", u64::from(v));
    }
    if let Some(u) = rec.userid.as_deref() {
        let mut masked = compact_str::CompactString::default();
        let _ = write!(masked, "{}", Masked(u));
        str_field(s, "userid", &masked);
    }
    if let Some(i) = rec.inaction {
        int_field(s, "inaction", i.0);
    }
    if let Some(r) = rec.rule.as_deref() {
        str_field(s, "rule", r);
    }
    if let Some(c) = rec.cluster.as_deref() {
        str_field(s, "cluster", c);
    }
    if let Some(e) = rec.endpoint.as_deref() {
        str_field(s, "endpoint", e);
    }
    if let Some(p) = rec.pin {
        str_field(s, "pin", p);
    }
    num_field(s, "status", u64::from(rec.status));
    if let Some(o) = rec.outaction {
        int_field(s, "outaction", o.0);
    }
    if let Some(e) = rec.error_code {
        str_field(s, "error", e);
    }
    if let Some(f) = rec.fallback_from.as_deref() {
        str_field(s, "fallback_from", f);
    }
    num_field(s, "total_us", rec.total.as_micros() as u64);
    if let Some(u) = rec.upstream {
        num_field(s, "upstream_us", u.as_micros() as u64);
    }
    s.push_str(",\"target\":\"graygate::access\"}\n");
}

fn str_field(s: &mut String, key: &str, value: &str) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    push_json_str(s, value);
}

fn num_field(s: &mut String, key: &str, value: u64) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    s.push_str(itoa::Buffer::new().format(value));
}

fn int_field(s: &mut String, key: &str, value: i64) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    s.push_str(itoa::Buffer::new().format(value));
}

/// A JSON string literal, escaped as serde_json escapes it.
fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    // Names, ids, paths and URLs almost never need escaping: copy them whole.
    if !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        s.push_str(v);
        s.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in v.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        s.push_str(&v[start..i]);
        if esc.is_empty() {
            let _ = write!(s, "\\u{b:04x}");
        } else {
            s.push_str(esc);
        }
        start = i + 1;
    }
    s.push_str(&v[start..]);
    s.push('"');
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS.` of the last second seen on this thread.
    static SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 UTC with microseconds, as the fmt layer's default timer writes it:
/// `2026-11-27T00:11:12.123456Z`. The date and time of day change once a second, so they are
/// formatted once a second.
fn push_timestamp(s: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, day) = crate::civil::civil_from_days(days as i64);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            cached.0 = secs;
        }
        s.push_str(&cached.1);
    });
    let micros = d.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    s.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    s.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_micros(1_795_739_472_123_456),
        );
        assert_eq!(s, "2026-11-27T00:31:12.123456Z");
        s.clear();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn text_values_cannot_split_lines_or_forge_fields() {
        assert_eq!(Text("abc-1").to_string(), "abc-1");
        assert_eq!(Text("a\nb").to_string(), "a\\nb");
        assert_eq!(Text("\u{1b}[31mred").to_string(), "\\u{1b}[31mred");
        assert_eq!(Text("x status=200").to_string(), "\"x status=200\"");
        assert_eq!(Text("q\"\\").to_string(), "\"q\\\"\\\\\"");
        assert_eq!(Text("").to_string(), "\"\"");
        assert_eq!(Text("\u{85}é").to_string(), "\\u{85}é");
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for v in ["plain", "q\"b\\s", "nl\n\t\r\u{1}\u{8}\u{c}", "ünï"] {
            let mut s = String::new();
            push_json_str(&mut s, v);
            assert_eq!(s, serde_json::to_string(v).unwrap());
        }
    }

    #[test]
    fn access_line_is_json_with_the_spec_fields() {
        let rec = TurnRecord {
            request_id: "abc-1".into(),
            path: "/oifde/rest/v2/crs/process/101".into(),
            client: Some("192.0.2.7".parse().unwrap()),
            vdn: Some(101),
            userid: Some("1732000000-123456-42".into()),
            inaction: Some(crate::protocol::Inaction(8)),
            rule: Some(Arc::from("one-in-ten")),
            cluster: Some(Arc::from("canary")),
            endpoint: Some(Arc::from("http://127.0.0.1:18085")),
            pin: Some("new"),
            status: 200,
            outaction: Some(crate::protocol::Outaction(9)),
            total: Duration::from_micros(321),
            upstream: Some(Duration::from_micros(200)),
            ..TurnRecord::default()
        };
        let mut s = String::new();
        access_json(&mut s, &rec, UNIX_EPOCH);
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "turn");
        assert_eq!(v["target"], "graygate::access");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["vdn"], 101);
        assert_eq!(v["userid"], "1732***42");
        assert_eq!(v["inaction"], 8);
        assert_eq!(v["rule"], "one-in-ten");
        assert_eq!(v["cluster"], "canary");
        assert_eq!(v["endpoint"], "http://127.0.0.1:18085");
        assert_eq!(v["pin"], "new");
        assert_eq!(v["status"], 200);
        assert_eq!(v["outaction"], 9);
        assert_eq!(v["total_us"], 321);
        assert_eq!(v["upstream_us"], 200);
        assert!(v.get("error").is_none() && v.get("fallback_from").is_none());
    }

    #[test]
    fn a_blocked_output_does_not_hold_the_exit() {
        /// A pipe nobody reads: every write blocks until the test ends.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Err(std::io::Error::other("closed"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (sink, guard) = LogSink::start(Stuck(rx), true);
        sink.append(b"first line\n");
        std::thread::sleep(BATCH_DELAY * 3);
        sink.append(b"second line\n");
        let started = tokio::time::Instant::now();
        assert!(
            !guard.finish(Duration::from_millis(200)),
            "reported as not flushed"
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(tx);
    }

    #[test]
    fn sink_writes_everything_before_the_guard_returns() {
        #[derive(Clone, Default)]
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let (sink, guard) = LogSink::start(out.clone(), true);
        for i in 0..1000 {
            sink.append(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(text.lines().last(), Some("line 999"));
    }
}
