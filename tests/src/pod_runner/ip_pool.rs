//! Pod IPs: one loopback address per pod from the runner's /24 (Linux routes all of 127/8
//! to `lo`, so each pod can bind its ports on its own address). Pure.

use std::{collections::BTreeSet, net::Ipv4Addr};

/// The free and used addresses of a `127.x.y.0/24` pool (hosts `.2`–`.254`).
#[derive(Debug, Clone)]
pub struct IpPool {
    prefix: [u8; 3],
    used: BTreeSet<u8>,
}

impl IpPool {
    /// A pool for `cidr`, which must be a /24 inside 127.0.0.0/8.
    pub fn parse(cidr: &str) -> Result<Self, String> {
        let bad =
            || format!("--pod-cidr {cidr:?}: expected a /24 inside 127.0.0.0/8, e.g. 127.0.0.0/24");
        let (addr, bits) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let [a, b, c, _] = addr.octets();
        if bits != "24" || a != 127 {
            return Err(bad());
        }
        Ok(Self {
            prefix: [a, b, c],
            used: BTreeSet::new(),
        })
    }

    /// Takes `preferred` when it is in the pool and free (a pod adopted after a restart keeps
    /// its address), else the lowest free address; `None` when the pool is exhausted.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let [a, b, c] = self.prefix;
        let host = preferred
            .filter(|ip| ip.octets()[..3] == self.prefix)
            .map(|ip| ip.octets()[3])
            .filter(|h| (2..=254).contains(h) && !self.used.contains(h))
            .or_else(|| (2..=254).find(|h| !self.used.contains(h)))?;
        self.used.insert(host);
        Some(Ipv4Addr::new(a, b, c, host))
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if ip.octets()[..3] == self.prefix {
            self.used.remove(&ip.octets()[3]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_reused_after_release_and_keep_a_preferred_one() {
        let mut pool = IpPool::parse("127.0.5.0/24").unwrap();
        let first = pool.allocate(None).unwrap();
        let second = pool.allocate(None).unwrap();
        assert_eq!(
            (first, second),
            (Ipv4Addr::new(127, 0, 5, 2), Ipv4Addr::new(127, 0, 5, 3))
        );
        pool.release(first);
        assert_eq!(pool.allocate(None), Some(first));
        let kept = Ipv4Addr::new(127, 0, 5, 77);
        assert_eq!(pool.allocate(Some(kept)), Some(kept));
        assert_eq!(pool.allocate(Some(kept)), Some(Ipv4Addr::new(127, 0, 5, 4)));
        assert!(IpPool::parse("10.0.0.0/24").is_err());
        assert!(IpPool::parse("127.0.0.0/16").is_err());
    }
}
