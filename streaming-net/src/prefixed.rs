//! A stream whose first bytes were already read (to tell HTTP/2's preface
//! from an HTTP/1 request) and are handed to hyper again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    read: usize,
    inner: T,
    /// An error of the read that followed the prefix, for the next call
    /// (the prefix was handed over in that call).
    error: Option<io::Error>,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Prefixed<T> {
        Prefixed {
            prefix,
            read: 0,
            inner,
            error: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            // What follows the prefix in the same read: hyper then gets a
            // request head whole, instead of the prefix alone and the rest
            // in a buffer it had to grow (by 8 KiB per connection, kept
            // for the connection's life).
            if this.read == this.prefix.len() && buf.remaining() > 0 {
                this.prefix = Vec::new();
                this.read = 0;
                if let Poll::Ready(Err(error)) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                    this.error = Some(error);
                }
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
    use tokio::io::AsyncReadExt;

    /// A reader that fails.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        }
    }

    #[tokio::test]
    async fn the_prefix_and_what_follows_come_in_one_read() {
        let mut s = Prefixed::new(b"GET ".to_vec(), &b"/ HTTP/1.1\r\n\r\n"[..]);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "then the end");

        // A buffer smaller than the prefix: the prefix in pieces, in order.
        let mut s = Prefixed::new(b"GET ".to_vec(), &b"/x"[..]);
        let mut all = Vec::new();
        let mut small = [0u8; 3];
        loop {
            let n = s.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&small[..n]);
        }
        assert_eq!(all, b"GET /x");
    }

    #[tokio::test]
    async fn an_error_after_the_prefix_comes_with_the_next_read() {
        let mut s = Prefixed::new(b"GET ".to_vec(), Failing);
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
