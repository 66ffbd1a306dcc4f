//! The answers hyper makes by itself, as problem+json.
//!
//! hyper's HTTP/1 server answers a request it cannot parse before any service sees it: 400 for a
//! malformed request line or header, 414 for a request target over 65,534 bytes, 431 for a header
//! block over [`MAX_HEADER_BYTES`] or with more than [`MAX_HEADERS`] fields. Those answers have an
//! empty body, and hyper has no hook to give them another: its `Server::on_error`
//! (`proto/h1/role.rs`) makes a bare head and the connection writes it, then closes.
//!
//! So [`ProblemAnswers`] stands between hyper and the socket and replaces such an answer, known by
//! its exact status line and its `content-length: 0`, with the same status and headers and an RFC
//! 9457 problem body saying what to change. It only ever looks at the start of a write: hyper
//! writes an answer's head first, and writes its own answers only before it has begun another.
//! Everything else passes through unchanged. The problem types are listed in `docs/problems.md`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest header block (request line included) the listener reads: hyper's default
/// `max_buf_size`, set explicitly so that the 431 answer can say it.
pub const MAX_HEADER_BYTES: usize = 8192 + 4096 * 100;

/// The most header fields a request may have: hyper's default, which it keeps on the stack.
pub const MAX_HEADERS: usize = 100;

/// The end of an HTTP head.
const END_OF_HEAD: &[u8] = b"\r\n\r\n";

/// hyper's own answers: the status line it writes, and the problem type, title and detail that
/// replace its empty body.
const ANSWERS: [(&str, &str, &str, &str); 3] = [
    (
        "HTTP/1.1 400 Bad Request",
        "malformed-request",
        "Malformed request",
        "the request line or a header field is not valid HTTP/1.1",
    ),
    (
        "HTTP/1.1 414 URI Too Long",
        "uri-too-long",
        "URI too long",
        "the request target is over this server's limit of 65534 bytes",
    ),
    (
        "HTTP/1.1 431 Request Header Fields Too Large",
        "headers-too-large",
        "Request header fields too large",
        // MAX_HEADER_BYTES and MAX_HEADERS, as text for a constant (a test checks they agree).
        "the request's header block is over this server's limit of 417792 bytes or 100 header fields; \
         send fewer or smaller headers",
    ),
];

/// An I/O stream whose writes pass through, but for hyper's own error answers, which are written
/// with a problem+json body instead of an empty one.
#[derive(Debug)]
pub(super) struct ProblemAnswers<I> {
    inner: I,
    /// The replacement answer's bytes not yet written to `inner`: written before anything else.
    pending: Vec<u8>,
}

impl<I> ProblemAnswers<I> {
    pub(super) fn new(inner: I) -> Self {
        Self { inner, pending: Vec::new() }
    }
}

impl<I: AsyncWrite + Unpin> ProblemAnswers<I> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written.min(self.pending.len()));
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` starts with one of hyper's own answers, takes its head (returning how many bytes
    /// of `buf` that is) and queues the replacement in its stead.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let (head, answer) = replacement(buf)?;
        self.pending = answer;
        // Written now as far as the socket takes it; the rest on the next write, flush or
        // shutdown, which hyper makes at once (it closes the connection after such an answer).
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(head)),
        })
    }
}

/// The length of the head that `buf` starts with, and the answer that replaces it, when that
/// head is one of hyper's own empty answers.
fn replacement(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let (status_line, kind, title, detail) =
        ANSWERS.iter().find(|(status_line, ..)| buf.starts_with(status_line.as_bytes()))?;
    let end = buf.windows(END_OF_HEAD.len()).position(|w| w == END_OF_HEAD)?;
    let head = std::str::from_utf8(buf.get(..end)?).ok()?;
    let mut lines = head.split("\r\n");
    if lines.next() != Some(*status_line) {
        return None;
    }
    let fields: Vec<&str> = lines.collect();
    // Only an answer without a body is hyper's own; a service's answer with this status has one.
    if !fields.iter().any(|f| f.eq_ignore_ascii_case("content-length: 0")) {
        return None;
    }
    let status = status_line.get(9..12)?;
    let body = format!(
        "{{\"type\":\"urn:clover:problem:{kind}\",\"title\":\"{title}\",\"status\":{status},\"detail\":\"{detail}\"}}"
    );
    let mut answer = format!("{status_line}\r\n");
    for field in fields {
        let name = field.split(':').next().unwrap_or_default();
        if !["content-length", "content-type", "connection"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            answer.push_str(field);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("content-type: application/problem+json\r\n");
    answer.push_str(&format!("content-length: {}\r\n", body.len()));
    answer.push_str("connection: close\r\n\r\n");
    answer.push_str(&body);
    Some((end + END_OF_HEAD.len(), answer.into_bytes()))
}

impl<I: AsyncRead + Unpin> AsyncRead for ProblemAnswers<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ProblemAnswers<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(replaced) = this.replace(cx, buf) {
            return replaced;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        // hyper puts a head in a buffer of its own, the first of a write.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(replaced) = this.replace(cx, first)
        {
            return replaced;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_states_the_limits_the_listener_sets() {
        let (.., detail) = ANSWERS[2];
        assert!(detail.contains(&format!("limit of {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} header fields")));
    }

    #[test]
    fn hyper_s_own_answers_get_a_problem_body_and_keep_their_other_fields() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n";
        let (taken, answer) = replacement(hyper).unwrap();
        assert_eq!(taken, hyper.len());
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/problem+json"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        assert!(!head.contains("content-length: 0"), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["type"], "urn:clover:problem:headers-too-large");
        assert_eq!(problem["status"], 431);
        for (status_line, ..) in ANSWERS {
            let head = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
            let (_, answer) = replacement(head.as_bytes()).unwrap();
            let answer = String::from_utf8(answer).unwrap();
            let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
            assert_eq!(body["status"].to_string(), status_line[9..12], "{answer}");
        }
    }

    #[test]
    fn anything_else_passes_through() {
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 12\r\n\r\n{\"a\":\"b\"}...",
            b"HTTP/1.1 400 Bad Request Body\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"{\"type\":\"urn:clover:problem:internal\"}",
            b"",
        ] {
            assert!(replacement(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
