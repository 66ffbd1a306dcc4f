//! The records of a transfer's stream, treated once and kept until the classes are known.
//!
//! A stream sends only the records of classes that still have k distinct subjects when it is
//! sent, which is known only after every record was treated. Rather than have the custodian
//! open and treat every record twice (once to count the classes again, once to send), the
//! stream treats each record once and keeps its NDJSON line here, with its class, until the
//! pass ends; then the lines of the classes released are read back and sent.
//!
//! The spool is a file without a name (`O_TMPFILE`: gone when it is closed, or when the
//! process ends however it ends) in the boundary's data directory, so it stays on the region's
//! machine, and what it holds is sealed ([`DataKey::seal`], AES-256-GCM) under a key made for
//! this stream that exists only in this process's memory: a copy of the file, or one left by a
//! crash, opens to nothing. Each chunk (a page of records) is sealed on its own, bound to its
//! place in the file, so that chunks cannot be reordered, repeated or dropped unnoticed. Memory
//! holds one chunk at a time, not the transfer.

use std::io::{Read, Seek, Write};
use std::path::Path;

use clover_egress::kanon::ClassKey;
use clover_keys::DataKey;
use zeroize::Zeroizing;

/// A spool's failure: the file, or a chunk that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Making, writing or reading the file.
    #[error("the transfer's spool file: {0}")]
    Io(#[from] std::io::Error),
    /// A chunk that does not open under the stream's key, or does not parse.
    #[error("chunk {0} of the transfer's spool does not open as it was written")]
    Chunk(u64),
    /// The key could not be made.
    #[error("the transfer's spool key could not be made")]
    Key(#[source] clover_keys::KeyError),
}

/// A chunk being filled: lines with their classes.
#[derive(Debug, Default)]
pub struct Chunk {
    bytes: Zeroizing<Vec<u8>>,
}

impl Chunk {
    /// Adds `line` (one NDJSON line, its newline included) of class `class`.
    pub fn push(&mut self, class: &ClassKey, line: &[u8]) {
        self.bytes.extend_from_slice(class);
        self.bytes.extend_from_slice(&u32::try_from(line.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.bytes.extend_from_slice(line);
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The spool of one stream: written chunk by chunk, then read back once.
pub struct Spool {
    file: Option<std::fs::File>,
    key: std::sync::Arc<DataKey>,
    written: u64,
    read: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("written", &self.written).field("read", &self.read).finish_non_exhaustive()
    }
}

/// What chunk `n` is sealed to: its place in the file.
fn place(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

impl Spool {
    /// A new spool in `dir` (or, if a file cannot be made there, the system's directory for
    /// temporary files), under a fresh key.
    pub fn new(dir: &Path) -> Result<Self, SpoolError> {
        let file = match tempfile::tempfile_in(dir) {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "no spool in the data directory; using the temporary directory");
                tempfile::tempfile()?
            }
        };
        let key = DataKey::generate().map_err(SpoolError::Key)?;
        Ok(Self { file: Some(file), key: std::sync::Arc::new(key), written: 0, read: 0 })
    }

    /// Runs `work` on the file off the runtime's threads.
    async fn on_file<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut std::fs::File) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("the spool's file was lost"))?;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut file);
            (file, result)
        })
        .await
        .map_err(|e| SpoolError::Io(std::io::Error::other(e)))?;
        self.file = Some(file);
        result
    }

    /// Seals and writes `chunk`.
    pub async fn write(&mut self, chunk: Chunk) -> Result<(), SpoolError> {
        let n = self.written;
        let key = self.key.clone();
        self.on_file(move |file| {
            let sealed = key.seal(&place(n), &chunk.bytes).map_err(|_| SpoolError::Chunk(n))?;
            let len = u32::try_from(sealed.len()).map_err(|_| SpoolError::Chunk(n))?;
            file.write_all(&len.to_be_bytes())?;
            file.write_all(&sealed)?;
            Ok(())
        })
        .await?;
        self.written += 1;
        Ok(())
    }

    /// The next chunk written, in order, as its lines with their classes; `None` after the last
    /// (the first call reads from the start).
    pub async fn next(&mut self) -> Result<Option<Vec<(ClassKey, Vec<u8>)>>, SpoolError> {
        if self.read >= self.written {
            return Ok(None);
        }
        let n = self.read;
        let key = self.key.clone();
        let lines = self
            .on_file(move |file| {
                if n == 0 {
                    file.seek(std::io::SeekFrom::Start(0))?;
                }
                let mut len = [0u8; 4];
                file.read_exact(&mut len)?;
                let mut sealed = vec![0u8; u32::from_be_bytes(len) as usize];
                file.read_exact(&mut sealed)?;
                let plain = key.open(&place(n), &sealed).map_err(|_| SpoolError::Chunk(n))?;
                parse(&plain).ok_or(SpoolError::Chunk(n))
            })
            .await?;
        self.read += 1;
        Ok(Some(lines))
    }
}

/// The lines of an opened chunk.
fn parse(mut plain: &[u8]) -> Option<Vec<(ClassKey, Vec<u8>)>> {
    let mut lines = Vec::new();
    while !plain.is_empty() {
        let (class, rest) = plain.split_first_chunk::<32>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let (line, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        lines.push((*class, line.to_vec()));
        plain = rest;
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_come_back_in_order_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path()).unwrap();
        for n in 0..3u8 {
            let mut chunk = Chunk::default();
            chunk.push(&[n; 32], format!("{{\"n\":{n}}}\n").as_bytes());
            chunk.push(&[n + 10; 32], b"{}\n");
            spool.write(chunk).await.unwrap();
        }
        for n in 0..3u8 {
            let lines = spool.next().await.unwrap().unwrap();
            assert_eq!(
                lines,
                vec![([n; 32], format!("{{\"n\":{n}}}\n").into_bytes()), ([n + 10; 32], b"{}\n".to_vec())]
            );
        }
        assert!(spool.next().await.unwrap().is_none());
        // Nothing of it is left in the directory, and nothing was written in the clear.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn what_it_holds_is_sealed_and_a_changed_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path()).unwrap();
        let mut chunk = Chunk::default();
        chunk.push(&[7; 32], b"{\"fields\":{\"email\":\"someone@example.org\"}}\n");
        spool.write(chunk).await.unwrap();
        let mut file = spool.file.take().unwrap();
        let mut held = Vec::new();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut held).unwrap();
        assert!(!held.windows(7).any(|w| w == b"someone"), "the spool holds a line in the clear");
        // One bit flipped in the sealed chunk.
        let last = held.len() - 1;
        held[last] ^= 1;
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.write_all(&held).unwrap();
        spool.file = Some(file);
        assert!(matches!(spool.next().await, Err(SpoolError::Chunk(0))));
    }
}
