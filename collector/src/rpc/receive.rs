//! A bound on the agent message bytes the collector holds at once, from the socket on.
//!
//! jsonrpsee reads each WebSocket message whole into memory, spawns its handling and reads the
//! next one straight away; [`super::budget`] only bounds the decode-and-store stage, so without
//! this module every agent sending a large report at the same moment costs a whole message of
//! memory (up to the 32 MiB message cap) while it waits for its turn, and one connection can
//! queue any number of them. This module wraps every connection's byte stream in
//! [`BudgetedIo`], which reads the WebSocket frame headers as they arrive (RFC 6455 §5.2; the
//! payload is not touched) and enforces two rules on an agent connection:
//!
//! * **One message at a time per connection.** A new data message's payload is not read until
//!   the previous message has been answered (the server wrote a response, or the middleware
//!   finished a JSON-RPC notification, which has none). Agents wait for each answer anyway, so
//!   this costs them nothing; control frames (pong, close) pass meanwhile.
//! * **A global budget** ([`RECEIVE_BYTES_IN_FLIGHT`]) of message bytes received and not yet
//!   answered, across all connections. A message's size is taken from its frame header before any
//!   of its payload is read (a fragmented message takes the message cap), so a connection holds
//!   either a whole message's permits or none: no two half-received messages can deadlock each
//!   other. While the budget is spent, agents' bytes wait in their sockets (back-pressure through
//!   TCP; nothing is refused or dropped). A connection kept waiting longer than the WebSocket
//!   inactivity limit (90 s; its pongs are queued behind its message) is closed by jsonrpsee's
//!   ping check, and its agent reconnects and resends the batch, which is stored once: this
//!   takes a flood of maximal reports, not ordinary ones (96 MiB is ~400 ordinary reports).
//!
//! So the report JSON in memory is at most this budget, whatever the number of agents. Where the
//! WebSocket stream starts is known exactly because `/rpc` is only served as the first request on
//! a connection (see [`crate::server`]): the stream begins after the first request head. Before
//! the request is known to be an agent's upgrade, frames are followed without being held (at most
//! what hyper read ahead with the head), and counted so that their answers are matched.
//!
//! Hand-written because no crate puts a budget below jsonrpsee's message reader; the cost is
//! two or three more `read` calls per message (the frame header is read by itself).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Agent message bytes received and not yet answered, across all agents: 96 MiB, room for three
/// messages of the 32 MiB cap or hundreds of ordinary reports (a 1,000-process sample is ~62 KB
/// with its process records as arrays, ~215 KB as objects).
pub const RECEIVE_BYTES_IN_FLIGHT: usize = 96 * 1024 * 1024;

/// Permits count KiB (a tokio semaphore holds at most `usize::MAX >> 3` permits).
const PERMIT_BYTES: u64 = 1024;

/// How a server answer to a subscription starts; anything else the server sends as a data message
/// is the answer to an agent's message (jsonrpsee writes `jsonrpc`, then `id`, in responses).
const PUSH_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method""#;

/// The process-wide budget.
#[derive(Debug, Clone)]
pub struct ReceiveBudget {
    permits: Arc<Semaphore>,
    /// Permits of the largest message a connection may send (the per-message cap), also the most
    /// one message takes.
    message_kib: u32,
}

impl ReceiveBudget {
    /// A budget of `bytes` (whole KiB) for messages of at most `max_message_bytes` each; the
    /// budget is raised to one such message if smaller, so every legal message gets through.
    pub fn new(bytes: usize, max_message_bytes: u32) -> ReceiveBudget {
        let message_kib = u64::from(max_message_bytes).div_ceil(PERMIT_BYTES).max(1);
        let message_kib = u32::try_from(message_kib).unwrap_or(u32::MAX);
        let kib = (bytes as u64)
            .div_ceil(PERMIT_BYTES)
            .max(u64::from(message_kib));
        ReceiveBudget {
            permits: Arc::new(Semaphore::new(
                usize::try_from(kib).unwrap_or(usize::MAX >> 3),
            )),
            message_kib,
        }
    }

    /// Permits free now (KiB).
    #[cfg(test)]
    fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }

    /// The shared state of one new connection.
    pub fn connection(&self) -> Arc<Connection> {
        Arc::new(Connection {
            role: AtomicU8::new(ROLE_UNDECIDED),
            max_message_bytes: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            answers: Mutex::new(Answers::default()),
        })
    }

    /// Wraps a connection's byte stream (after TLS, if any).
    pub fn wrap<I>(&self, io: I, connection: Arc<Connection>) -> BudgetedIo<I> {
        BudgetedIo {
            inner: io,
            connection,
            budget: self.clone(),
            head: HeadScan::default(),
            rx: FrameScan::default(),
            admission: None,
            acquiring: None,
            held: None,
            stash: [0; 14],
            stash_len: 0,
            stash_pos: 0,
            response_head: HeadScan::default(),
            tx: FrameScan {
                capture: PUSH_PREFIX.len(),
                ..FrameScan::default()
            },
        }
    }
}

const ROLE_UNDECIDED: u8 = 0;
const ROLE_HTTP: u8 = 1;
const ROLE_AGENT: u8 = 2;

/// One connection's state, shared by its [`BudgetedIo`], the request router and the JSON-RPC
/// middleware.
#[derive(Debug)]
pub struct Connection {
    role: AtomicU8,
    /// The message cap jsonrpsee applies on this connection (set with the agent role).
    max_message_bytes: AtomicU32,
    requests: AtomicU32,
    answers: Mutex<Answers>,
}

/// Messages received and not yet answered, oldest first, each with its permits (none for
/// messages read before the connection was known to be an agent's).
#[derive(Debug, Default)]
struct Answers {
    unanswered: VecDeque<Option<OwnedSemaphorePermit>>,
    /// The reader, parked until the unanswered message is answered.
    reader: Option<Waker>,
}

impl Connection {
    /// Counts a request on this connection; true for its first.
    pub fn first_request(&self) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// The connection carries agent WebSocket traffic from the end of its first request head,
    /// with messages of at most `max_message_bytes` (jsonrpsee's cap on this connection): the
    /// rules of the module doc apply from now on.
    pub fn agent(&self, max_message_bytes: u32) {
        self.max_message_bytes
            .store(max_message_bytes, Ordering::Relaxed);
        self.role.store(ROLE_AGENT, Ordering::Release);
    }

    /// The connection serves plain HTTP: its bytes pass untouched from now on.
    pub fn http(&self) {
        self.role.store(ROLE_HTTP, Ordering::Release);
        let waker = self.lock().reader.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The oldest unanswered message has been answered: its permits are returned and the
    /// connection may read the next one.
    pub fn answered(&self) {
        let (permits, waker) = {
            let mut a = self.lock();
            (a.unanswered.pop_front(), a.reader.take())
        };
        drop(permits);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Messages received and not yet answered.
    #[cfg(test)]
    fn unanswered(&self) -> usize {
        self.lock().unanswered.len()
    }

    fn role(&self) -> u8 {
        self.role.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Finds the end of an HTTP/1 head (the first empty line; lines end in `\r\n` or `\n`, as hyper's
/// parser accepts, and empty lines before the request line are skipped as it skips them).
#[derive(Debug, Default)]
struct HeadScan {
    /// 0: inside a line; 1: at a line's start; 2: at a line's start after `\r`.
    at: u8,
    seen_text: bool,
    done: bool,
}

impl HeadScan {
    /// Consumes head bytes; returns how many belonged to the head.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            self.at = match (self.at, b) {
                (1 | 2, b'\n') if self.seen_text => {
                    self.done = true;
                    return i + 1;
                }
                (1, b'\r') => 2,
                (_, b'\n') => 1,
                (0, b'\r') => 0,
                _ => {
                    self.seen_text = true;
                    0
                }
            };
        }
        bytes.len()
    }
}

/// What a [`FrameScan`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The header of a data frame that starts a message has been read; `bytes` is its payload
    /// length, or `None` when the message is fragmented (its size is not known yet).
    MessageStart { bytes: Option<u64> },
    /// The last frame of a data message has been read whole.
    MessageEnd,
}

/// A fragmented message grew past the connection's cap. jsonrpsee's reader (soketto) would
/// discard the whole accumulated length from the stream, losing the frame boundaries this
/// module follows, so the connection is closed instead.
#[derive(Debug)]
struct TooLarge;

/// Follows WebSocket frame boundaries (RFC 6455 §5.2) in a byte stream without buffering it.
#[derive(Debug, Default)]
struct FrameScan {
    state: ScanState,
    /// Inside a fragmented data message (between its first frame and its final one).
    in_message: bool,
    /// Payload bytes of the data message so far.
    message_bytes: u64,
    /// Keep this many first payload bytes of each data message in `prefix`.
    capture: usize,
    prefix: Vec<u8>,
}

#[derive(Debug)]
enum ScanState {
    Header {
        bytes: [u8; 14],
        have: usize,
    },
    Payload {
        remaining: u64,
        fin: bool,
        data: bool,
    },
}

impl Default for ScanState {
    fn default() -> ScanState {
        ScanState::Header {
            bytes: [0; 14],
            have: 0,
        }
    }
}

impl FrameScan {
    /// Bytes to read before the scan reaches a frame boundary or the end of a header: reading
    /// at most this many never passes a point where a rule applies.
    fn until_boundary(&self) -> u64 {
        match &self.state {
            ScanState::Header { bytes, have } => (header_len(bytes, *have) - have) as u64,
            ScanState::Payload { remaining, .. } => *remaining,
        }
    }

    /// Between frames or inside a header.
    fn in_header(&self) -> bool {
        matches!(self.state, ScanState::Header { .. })
    }

    /// Part of a header has been read.
    fn mid_header(&self) -> bool {
        matches!(self.state, ScanState::Header { have, .. } if have > 0)
    }

    /// Consumes bytes up to the first event; returns how many were consumed and the event.
    /// A frame with an empty payload ends on the next call, which may pass no bytes.
    /// `max_message` is the connection's message cap (see [`TooLarge`]).
    fn feed(&mut self, bytes: &[u8], max_message: u64) -> Result<(usize, Option<Event>), TooLarge> {
        let mut used = 0;
        loop {
            match &mut self.state {
                ScanState::Payload {
                    remaining,
                    fin,
                    data,
                } => {
                    if *remaining == 0 {
                        let ends = *fin && *data;
                        self.state = ScanState::default();
                        if ends {
                            self.in_message = false;
                            return Ok((used, Some(Event::MessageEnd)));
                        }
                        continue;
                    }
                    if used == bytes.len() {
                        return Ok((used, None));
                    }
                    let take =
                        (bytes.len() - used).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= take as u64;
                    if *data && self.prefix.len() < self.capture {
                        let keep = take.min(self.capture - self.prefix.len());
                        self.prefix.extend_from_slice(&bytes[used..used + keep]);
                    }
                    used += take;
                }
                ScanState::Header { bytes: head, have } => {
                    if used == bytes.len() {
                        return Ok((used, None));
                    }
                    head[*have] = bytes[used];
                    *have += 1;
                    used += 1;
                    if *have < header_len(head, *have) {
                        continue;
                    }
                    let fin = head[0] & 0x80 != 0;
                    let opcode = head[0] & 0x0f;
                    let len = payload_len(head);
                    let data = opcode < 8;
                    let starts = data && !self.in_message;
                    if starts {
                        self.message_bytes = 0;
                        self.prefix.clear();
                    }
                    if data {
                        self.message_bytes = self.message_bytes.saturating_add(len);
                        if !(starts && fin) && self.message_bytes > max_message {
                            return Err(TooLarge);
                        }
                        self.in_message = !fin;
                    }
                    self.state = ScanState::Payload {
                        remaining: len,
                        fin,
                        data,
                    };
                    if starts {
                        let bytes = fin.then_some(len);
                        return Ok((used, Some(Event::MessageStart { bytes })));
                    }
                }
            }
        }
    }
}

/// The full length of a frame header whose first `have` bytes are known (2 until they are).
fn header_len(head: &[u8; 14], have: usize) -> usize {
    if have < 2 {
        return 2;
    }
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn payload_len(head: &[u8; 14]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes([
            head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9],
        ]),
        n => u64::from(n),
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A connection's byte stream under the rules of the module doc.
pub struct BudgetedIo<I> {
    inner: I,
    connection: Arc<Connection>,
    budget: ReceiveBudget,
    /// The first request head (the stream starts after it).
    head: HeadScan,
    rx: FrameScan,
    /// A message's first frame header has been read; its payload waits for admission (KiB).
    admission: Option<u32>,
    acquiring: Option<Acquire>,
    /// Permits of the message being received.
    held: Option<OwnedSemaphorePermit>,
    /// Header bytes read from the socket and not yet handed on (`stash_pos..stash_len`).
    stash: [u8; 14],
    stash_len: usize,
    stash_pos: usize,
    /// The answer to the first request (the server's frames start after it).
    response_head: HeadScan,
    tx: FrameScan,
}

impl<I> BudgetedIo<I> {
    fn max_message(&self) -> u64 {
        match self.connection.role() {
            ROLE_AGENT => u64::from(self.connection.max_message_bytes.load(Ordering::Relaxed)),
            _ => u64::MAX,
        }
    }

    /// Follows bytes that were read: a message start under the rules waits for admission, ends
    /// of messages join the unanswered queue.
    fn scan_read(&mut self, mut bytes: &[u8], enforce: bool) -> io::Result<()> {
        if !self.head.done {
            let n = self.head.feed(bytes);
            bytes = &bytes[n..];
        }
        let max = self.max_message();
        while self.head.done {
            let (n, event) = self.rx.feed(bytes, max).map_err(|TooLarge| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "fragmented WebSocket message larger than the message cap",
                )
            })?;
            bytes = &bytes[n..];
            match event {
                Some(Event::MessageStart { bytes: size }) if enforce => {
                    let kib = size.map_or(max, |b| b).div_ceil(PERMIT_BYTES).max(1);
                    // Larger than the cap: jsonrpsee reads and discards it without keeping it.
                    let kib = if size.is_some_and(|b| b > max) {
                        0
                    } else {
                        u32::try_from(kib)
                            .unwrap_or(self.budget.message_kib)
                            .min(self.budget.message_kib)
                    };
                    self.admission = Some(kib);
                    // Reads stop at header ends, so nothing of the payload is in this chunk.
                    return Ok(());
                }
                Some(Event::MessageEnd) => {
                    let held = self.held.take();
                    self.connection.lock().unanswered.push_back(held);
                }
                _ if bytes.is_empty() => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Admits the message whose header was read: waits until the connection's previous
    /// message was answered, then for its permits.
    fn poll_admit(&mut self, cx: &mut Context<'_>, kib: u32) -> Poll<()> {
        if self.acquiring.is_none() {
            let mut answers = self.connection.lock();
            if !answers.unanswered.is_empty() {
                answers.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(answers);
            if kib == 0 {
                self.admission = None;
                return Poll::Ready(());
            }
            self.acquiring = Some(Box::pin(
                self.budget.permits.clone().acquire_many_owned(kib),
            ));
        }
        if let Some(acquiring) = self.acquiring.as_mut() {
            let permit = std::task::ready!(acquiring.as_mut().poll(cx));
            // The semaphore is never closed; an error would only leave the message unheld.
            self.held = permit.ok();
        }
        self.acquiring = None;
        self.admission = None;
        Poll::Ready(())
    }

    /// Follows bytes that were written: an answer (not a subscription push) releases the
    /// oldest unanswered message.
    fn scan_written(&mut self, mut bytes: &[u8]) {
        if !self.response_head.done {
            let n = self.response_head.feed(bytes);
            bytes = &bytes[n..];
        }
        while self.response_head.done {
            // The server's own messages have no cap here.
            let Ok((n, event)) = self.tx.feed(bytes, u64::MAX) else {
                return;
            };
            bytes = &bytes[n..];
            match event {
                Some(Event::MessageEnd) if !self.tx.prefix.starts_with(PUSH_PREFIX) => {
                    self.connection.answered();
                }
                _ if bytes.is_empty() => return,
                _ => {}
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for BudgetedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let role = this.connection.role();
        if role == ROLE_HTTP {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        if role != ROLE_AGENT {
            // Before the role is known: read freely, follow the frames.
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.scan_read(&buf.filled()[before..], false)?;
            return Poll::Ready(Ok(()));
        }
        if !this.head.done {
            // hyper found a request head where this scan did not: the stream's start is unknown.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cannot find where the WebSocket stream starts",
            )));
        }
        loop {
            // A frame header read whole: handed on once its message is admitted.
            if this.stash_pos < this.stash_len && !this.rx.mid_header() {
                if let Some(kib) = this.admission {
                    std::task::ready!(this.poll_admit(cx, kib));
                    // A message with an empty payload ends without a byte read.
                    this.scan_read(&[], true)?;
                }
                let n = (this.stash_len - this.stash_pos).min(buf.remaining());
                buf.put_slice(&this.stash[this.stash_pos..this.stash_pos + n]);
                this.stash_pos += n;
                if this.stash_pos == this.stash_len {
                    (this.stash_pos, this.stash_len) = (0, 0);
                }
                return Poll::Ready(Ok(()));
            }
            if this.rx.in_header() {
                // Headers are read into the stash, not the caller's buffer: jsonrpsee's reader
                // allocates a message's whole length as soon as it sees the header, so it must
                // not see it before the message is admitted.
                let need = usize::try_from(this.rx.until_boundary()).unwrap_or(0);
                let start = this.stash_len;
                let end = (start + need).min(this.stash.len());
                let mut sub = ReadBuf::new(&mut this.stash[start..end]);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                if n == 0 {
                    // End of stream: hand on what there is, then the end.
                    if this.stash_pos < this.stash_len {
                        let rest = &this.stash[this.stash_pos..this.stash_len];
                        let n = rest.len().min(buf.remaining());
                        buf.put_slice(&rest[..n]);
                        this.stash_pos += n;
                    }
                    return Poll::Ready(Ok(()));
                }
                this.stash_len += n;
                let read = this.stash;
                this.scan_read(&read[start..start + n], true)?;
                continue;
            }
            let limit = usize::try_from(this.rx.until_boundary())
                .unwrap_or(usize::MAX)
                .min(buf.remaining());
            let dst = buf.initialize_unfilled_to(limit);
            let mut sub = ReadBuf::new(dst);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
            let n = sub.filled().len();
            buf.advance(n);
            this.scan_read(&buf.filled()[before..], true)?;
            return Poll::Ready(Ok(()));
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for BudgetedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if this.connection.role() == ROLE_AGENT {
            this.scan_written(&buf[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A client frame (masked, as RFC 6455 requires of clients).
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x11, 0x22, 0x33, 0x44];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// A server frame (unmasked).
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    /// Every event of `stream` fed in chunks of `chunk` bytes.
    fn events(stream: &[u8], chunk: usize, max: u64) -> Result<Vec<Event>, TooLarge> {
        let mut scan = FrameScan::default();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut rest = piece;
            loop {
                let (n, e) = scan.feed(rest, max)?;
                rest = &rest[n..];
                out.extend(e);
                if e.is_none() && rest.is_empty() {
                    break;
                }
            }
        }
        // An empty final frame ends on a call without bytes.
        while let (_, Some(e)) = scan.feed(&[], max)? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn request_heads_end_where_hyper_ends_them() {
        let cases: &[&[u8]] = &[
            b"GET /rpc HTTP/1.1\r\nHost: a\r\n\r\nXY",
            b"GET /rpc HTTP/1.1\nHost: a\n\nXY",
            b"GET /rpc HTTP/1.1\r\nHost: a\n\r\nXY",
            // Empty lines before the request line are skipped, as hyper does.
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\nXY",
        ];
        for head in cases {
            // Each head is followed by the two bytes "XY".
            let end = head.len() - 2;
            for split in 1..head.len() {
                let mut scan = HeadScan::default();
                let mut used = scan.feed(&head[..split]);
                if !scan.done {
                    used += scan.feed(&head[split..]);
                }
                assert!(scan.done, "{head:?} split at {split}");
                assert_eq!(used, end, "{head:?} split at {split}");
            }
        }
    }

    #[test]
    fn frames_are_followed_at_any_split() {
        let big = vec![7u8; 70_000];
        let mid = vec![9u8; 300];
        let mut stream = Vec::new();
        stream.extend(client_frame(1, true, b"{\"a\":1}"));
        stream.extend(client_frame(9, true, b"ping")); // control between messages
        stream.extend(client_frame(2, true, &big)); // 64-bit length
        stream.extend(client_frame(1, false, &mid)); // fragmented, 16-bit length
        stream.extend(client_frame(10, true, b"")); // pong inside a fragmented message
        stream.extend(client_frame(0, true, b"")); // empty final fragment
        stream.extend(client_frame(1, true, b"")); // empty message
        let want = vec![
            Event::MessageStart { bytes: Some(7) },
            Event::MessageEnd,
            Event::MessageStart {
                bytes: Some(70_000),
            },
            Event::MessageEnd,
            Event::MessageStart { bytes: None },
            Event::MessageEnd,
            Event::MessageStart { bytes: Some(0) },
            Event::MessageEnd,
        ];
        for chunk in [1, 2, 3, 5, 13, 4096, stream.len()] {
            assert_eq!(
                events(&stream, chunk, u64::MAX).ok(),
                Some(want.clone()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_fragmented_message_past_the_cap_closes_the_connection() {
        let mut stream = client_frame(1, false, &[1; 600]);
        stream.extend(client_frame(0, true, &[1; 600]));
        assert!(events(&stream, 64, 1000).is_err());
        assert!(events(&stream, 64, 1200).is_ok());
        // A single frame past the cap is left to jsonrpsee, which discards it whole.
        assert!(events(&client_frame(1, true, &[1; 2000]), 64, 1000).is_ok());
    }

    const HEAD: &[u8] = b"GET /rpc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    /// A server side that has read the request head and been made an agent connection.
    async fn agent_side(
        budget: &ReceiveBudget,
    ) -> (BudgetedIo<DuplexStream>, DuplexStream, Arc<Connection>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let conn = budget.connection();
        let mut io = budget.wrap(server, conn.clone());
        let mut client = client;
        client.write_all(HEAD).await.expect("write head");
        let mut got = vec![0; HEAD.len()];
        io.read_exact(&mut got).await.expect("read head");
        assert!(conn.first_request());
        conn.agent(1 << 20);
        io.write_all(RESPONSE_HEAD).await.expect("write 101");
        (io, client, conn)
    }

    async fn read_n(io: &mut BudgetedIo<DuplexStream>, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        io.read_exact(&mut got).await.expect("read");
        got
    }

    /// True when a read of one byte does not complete while the runtime has nothing else to do
    /// (it waits on the rules, not on bytes: they were all written before). Called at a
    /// message's start, so a read that waits has handed on nothing.
    async fn read_waits(io: &mut BudgetedIo<DuplexStream>) -> bool {
        let mut got = [0u8; 1];
        let read = io.read_exact(&mut got);
        tokio::pin!(read);
        for _ in 0..100 {
            if futures::poll!(read.as_mut()).is_ready() {
                return false;
            }
            tokio::task::yield_now().await;
        }
        true
    }

    #[tokio::test]
    async fn the_next_message_waits_for_the_answer_and_holds_its_size() {
        let budget = ReceiveBudget::new(1 << 20, 1 << 20);
        let (mut io, mut client, conn) = agent_side(&budget).await;
        let first = client_frame(1, true, &[b'a'; 100 * 1024]);
        let second = client_frame(1, true, &[b'b'; 50 * 1024]);
        let ping = client_frame(9, true, b"hi");
        client.write_all(&first).await.expect("write");
        client.write_all(&ping).await.expect("write");
        client.write_all(&second).await.expect("write");

        read_n(&mut io, first.len()).await;
        assert_eq!(conn.unanswered(), 1);
        assert_eq!(
            budget.available_kib(),
            1024 - 100,
            "the first message holds its size"
        );
        // Control frames pass while the message waits for its answer.
        read_n(&mut io, ping.len()).await;
        // The second message waits, header and all (jsonrpsee's reader would allocate its
        // length as soon as it saw the header).
        assert!(read_waits(&mut io).await);

        // A subscription push is not an answer.
        io.write_all(&server_frame(
            1,
            br#"{"jsonrpc":"2.0","method":"command","params":{}}"#,
        ))
        .await
        .expect("write push");
        assert!(read_waits(&mut io).await);
        assert_eq!(conn.unanswered(), 1);

        // The answer, written in two pieces, releases the first message.
        let answer = server_frame(1, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        io.write_all(&answer[..5]).await.expect("write");
        assert_eq!(conn.unanswered(), 1);
        io.write_all(&answer[5..]).await.expect("write");
        read_n(&mut io, second.len()).await;
        assert_eq!(conn.unanswered(), 1);
        assert_eq!(budget.available_kib(), 1024 - 50);
        conn.answered();
        assert_eq!(budget.available_kib(), 1024);
    }

    #[tokio::test]
    async fn a_spent_budget_holds_other_connections_until_an_answer() {
        let budget = ReceiveBudget::new(150 * 1024, 100 * 1024);
        let (mut a, mut a_client, a_conn) = agent_side(&budget).await;
        let (mut b, mut b_client, b_conn) = agent_side(&budget).await;
        let message = client_frame(2, true, &[0; 100 * 1024]);
        a_client.write_all(&message).await.expect("write");
        b_client.write_all(&message).await.expect("write");
        read_n(&mut a, message.len()).await;
        assert!(read_waits(&mut b).await, "b waits for budget");
        a.write_all(&server_frame(
            1,
            br#"{"jsonrpc":"2.0","id":1,"result":null}"#,
        ))
        .await
        .expect("answer");
        assert_eq!(a_conn.unanswered(), 0);
        read_n(&mut b, message.len()).await;
        assert_eq!(b_conn.unanswered(), 1);
        drop(b);
        drop(b_conn);
        assert_eq!(
            budget.available_kib(),
            150,
            "a closed connection gives its permits back"
        );
    }

    #[tokio::test]
    async fn http_connections_pass_untouched() {
        let budget = ReceiveBudget::new(1 << 20, 1 << 20);
        let (client, server) = tokio::io::duplex(1 << 16);
        let conn = budget.connection();
        let mut io = budget.wrap(server, conn.clone());
        let mut client = client;
        let body = client_frame(1, true, &[1; 4000]); // bytes that look like frames
        client
            .write_all(b"POST /x HTTP/1.1\r\nContent-Length: 4008\r\n\r\n")
            .await
            .expect("w");
        client.write_all(&body).await.expect("w");
        client.write_all(&body).await.expect("w");
        conn.first_request();
        conn.http();
        let mut got = vec![0; 41 + 2 * body.len()];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(budget.available_kib(), 1024);
    }
}
