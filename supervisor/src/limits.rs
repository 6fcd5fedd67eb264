//! Connection admission: a global cap and a per-address cap. A connection over either is answered with
//! `error` 513 (server busy) and closed, instead of costing a worker, a memfd and descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use guac_proto::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Counts open connections. `0` means no limit.
#[derive(Debug)]
pub struct ConnectionLimits {
    global: usize,
    per_address: usize,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Held for the life of an admitted connection; frees its place when dropped.
#[derive(Debug)]
pub struct Admission {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    pub fn new(global: usize, per_address: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits { global, per_address, open: Mutex::new(Counts::default()) })
    }

    /// A place for a connection from `address`, or `None` when a limit is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Admission> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        if (self.global > 0 && open.total >= self.global) || (self.per_address > 0 && from_address >= self.per_address)
        {
            return None;
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        Some(Admission { limits: self.clone(), address })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// Tells a connection over the limits that the server is busy (513), then closes it. Bounded in time.
pub async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut out = BytesMut::new();
    guac_proto::encode_error(&mut out, "Server is busy.", Status::ServerBusy);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so the close is not a reset that eats our error.
        let mut scratch = [0u8; 1024];
        while stream.read(&mut scratch).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_address_limits() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let limits = ConnectionLimits::new(3, 2);
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per-address limit");
        let _third = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "global limit");
        drop(first);
        assert!(limits.admit(b).is_some(), "a freed place is reusable");
        let unlimited = ConnectionLimits::new(0, 0);
        let held: Vec<_> = (0..100).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}
