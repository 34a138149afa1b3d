//! Connection limits: a cap on open connections per source address and in total, and an
//! idle timeout on every connection (no byte read or written for [`ConnLimits::idle`] closes
//! it). A client that opens a connection and never finishes its headers, or stops reading,
//! is closed after the idle timeout; a connection over a cap is closed as soon as accepted.
//! Agents ping every 10 s and the live stream sends a keep-alive every 15 s, so the idle
//! timeout never closes a healthy agent or subscriber.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection with no byte read or written for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections from one source address (agents behind one NAT share one).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 4096;
/// Open connections in total.
pub const MAX_CONNECTIONS: usize = 16384;

/// The connection limits of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Idle timeout of a connection.
    pub idle: Duration,
    /// Open connections from one source address.
    pub per_address: usize,
    /// Open connections in total.
    pub total: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            idle: IDLE_TIMEOUT,
            per_address: MAX_CONNECTIONS_PER_ADDRESS,
            total: MAX_CONNECTIONS,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One open connection's place in the counts, given back when dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.ip);
            }
        }
    }
}

/// A listener that enforces [`ConnLimits`].
pub struct Limited<L> {
    inner: L,
    limits: ConnLimits,
    counts: Arc<Mutex<Counts>>,
}

impl<L> Limited<L> {
    /// Wraps `inner` so that it accepts within `limits`.
    pub fn new(inner: L, limits: ConnLimits) -> Self {
        Limited {
            inner,
            limits,
            counts: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let here = c.per_address.get(&ip).copied().unwrap_or(0);
        if c.total >= self.limits.total || here >= self.limits.per_address {
            return None;
        }
        c.total += 1;
        *c.per_address.entry(ip).or_insert(0) += 1;
        Some(Slot {
            counts: self.counts.clone(),
            ip,
        })
    }
}

impl<L> axum::serve::Listener for Limited<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = Guarded<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.take(addr.ip()) {
                Some(slot) => {
                    let idle = self.limits.idle;
                    return (
                        Guarded {
                            io,
                            _slot: slot,
                            idle,
                            deadline: Box::pin(tokio::time::sleep(idle)),
                        },
                        addr,
                    );
                }
                None => {
                    tracing::debug!(%addr, "connection over the cap closed");
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once idle for too long.
pub struct Guarded<T> {
    io: T,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn progress(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progress();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(e) => Poll::Ready(e),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
