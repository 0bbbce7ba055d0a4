//! Container probes: `httpGet` probes are run (I/O) the way kubelet runs them; other kinds
//! always succeed, with a warning.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// GET `path` from `host:port`; a 2xx or 3xx answer is a success.
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A probe kind the runner does not run (exec, tcpSocket, grpc, https): always succeeds.
    AlwaysSucceeds,
}

/// One probe of a running container, with kubelet's thresholds and timing.
#[derive(Debug, Clone)]
pub struct ProbeRunner {
    check: Check,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    next_at: Instant,
    successes: u32,
    failures: u32,
    result: bool,
}

impl ProbeRunner {
    /// A probe for a container started at `started` whose pod has address `pod_ip`;
    /// `initial` is the result before the first run (false for readiness, true for liveness).
    pub fn new(
        kind: &str,
        probe: &Probe,
        container: &Container,
        pod_ip: &str,
        started: Instant,
        initial: bool,
    ) -> Self {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let check = match http_check(probe, container, pod_ip) {
            Some(check) => check,
            None => {
                tracing::warn!(
                    container = container.name,
                    kind,
                    "only httpGet probes are run (on http); this probe always succeeds"
                );
                Check::AlwaysSucceeds
            }
        };
        Self {
            check,
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            next_at: started + secs(probe.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    /// Runs the probe when it is due; returns its current result (true: healthy/ready).
    pub async fn tick(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_at {
            return self.result;
        }
        self.next_at = now + self.period;
        let ok = match &self.check {
            Check::AlwaysSucceeds => true,
            Check::Http {
                host,
                port,
                path,
                headers,
            } => tokio::time::timeout(self.timeout, http_get(host, *port, path, headers))
                .await
                .unwrap_or(false),
        };
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success_threshold {
                self.result = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold {
                self.result = false;
            }
        }
        self.result
    }
}

fn http_check(probe: &Probe, container: &Container, pod_ip: &str) -> Option<Check> {
    let http = probe.http_get.as_ref()?;
    if http
        .scheme
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
    {
        return None;
    }
    let port = match &http.port {
        IntOrString::Int(port) => u16::try_from(*port).ok()?,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())?,
    };
    let headers: BTreeMap<String, String> = http
        .http_headers
        .iter()
        .flatten()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    Some(Check::Http {
        host: http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_owned()),
        port,
        path: http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into()),
        headers: headers.into_iter().collect(),
    })
}

/// One HTTP/1.1 GET; true on a 2xx or 3xx status, as kubelet counts it.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return false;
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.35\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status: Option<u16> = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    status.is_some_and(|s| (200..400).contains(&s))
}
