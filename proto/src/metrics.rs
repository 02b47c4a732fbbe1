//! Prometheus metrics: every component registers its series in a
//! [`Registry`] and serves them as text on its metrics address
//! (`GET /metrics`, any path in fact), over plain HTTP/1.1.
//!
//! Series are named `berth_<component>_<what>` with the unit last
//! (`_seconds`, `_bytes`, `_total` for counters), as Prometheus' naming
//! conventions ask.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Latency buckets from 100µs to about 13s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 18)
}

/// A histogram of latencies in seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The registry as Prometheus' text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

/// Binds `addr` and serves `registry` there until the process ends;
/// returns the address bound (port 0 picks one).
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let body = render(&registry);
                    async move {
                        hyper::Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    });
    Ok(local)
}

/// Serves `registry` on `addr` if the component was given one
/// (`--metrics-listen`); says where in the log.
pub async fn serve_configured(
    addr: Option<SocketAddr>,
    registry: Registry,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bound = serve(addr, Arc::new(registry)).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
    })?;
    tracing::info!(%bound, "serving metrics");
    Ok(Some(bound))
}

/// Fetches `http://addr/metrics` (tests and tools): the text, or why not.
pub async fn scrape(addr: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("{addr}: unexpected answer: {response:.200}")),
    }
}

/// The value of the series `name` with exactly `labels` (e.g.
/// `method="Apply",code="OK"`; empty for none) in a scrape, if present.
pub fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == wanted).then(|| value.parse().ok())?
        })
}

/// A gRPC call's method (`Objects/Apply`) and status code (`Ok`,
/// `NotFound`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Histograms of latencies, one per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Counts and times every gRPC call a server answers, by method and code:
/// a tower layer for `connect::server().layer(…)`, so that no handler has
/// to remember to.
#[derive(Clone)]
pub struct GrpcMetrics {
    requests: Family<CallLabels, Counter>,
    latency: LatencyFamily<MethodLabels>,
    /// Each method's series by request path, made on its first call: a call
    /// then finds its series without allocating labels or hashing them
    /// into the families again.
    methods: Arc<RwLock<HashMap<String, Arc<MethodSeries>>>>,
    /// The series of every path past [`MAX_METHODS`].
    other: Arc<OnceLock<Arc<MethodSeries>>>,
}

/// Distinct request paths with series of their own; any further path
/// (a client can send any) is counted as `method="other"`, so that bogus
/// paths cannot grow the series, and the server's memory, without bound.
/// Berth's services have a few dozen methods.
const MAX_METHODS: usize = 256;

/// One method's series, handles onto the families' own.
struct MethodSeries {
    method: String,
    requests: Family<CallLabels, Counter>,
    latency: Histogram,
    /// By `tonic::Code`, made on the first call that ends with it.
    codes: [OnceLock<Counter>; CODES],
}

/// gRPC's status codes, `Ok` (0) to `Unauthenticated` (16).
const CODES: usize = 17;

impl GrpcMetrics {
    /// Registers `{prefix}_requests_total{method,code}` and
    /// `{prefix}_request_seconds{method}`.
    pub fn register(registry: &mut Registry, prefix: &str) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            methods: Arc::default(),
            other: Arc::default(),
        };
        registry.register(
            format!("{prefix}_requests"),
            "gRPC calls answered, by method and status code",
            metrics.requests.clone(),
        );
        registry.register(
            format!("{prefix}_request_seconds"),
            "Time to answer a gRPC call (to the first response for streams), by method",
            metrics.latency.clone(),
        );
        metrics
    }

    /// The series of the method at `path` (`/berth.v1.Objects/Apply`), if
    /// a call to it was answered before.
    fn known(&self, path: &str) -> Option<Arc<MethodSeries>> {
        self.methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    /// The series for a call to `path` that ended with `code`, made if
    /// needed. A path no service serves (the router answers UNIMPLEMENTED)
    /// gets none of its own, nor does any past [`MAX_METHODS`]: they count
    /// as `method="other"`.
    fn method(&self, path: &str, code: tonic::Code) -> Arc<MethodSeries> {
        let other = || {
            self.other
                .get_or_init(|| self.series("other".to_string()))
                .clone()
        };
        let mut methods = self.methods.write().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = methods.get(path) {
            return series.clone();
        }
        if code == tonic::Code::Unimplemented || methods.len() >= MAX_METHODS {
            return other();
        }
        // `/berth.v1.Objects/Apply` → `Objects/Apply`.
        let method = path
            .rsplit_once('.')
            .map_or(path, |(_, method)| method)
            .trim_start_matches('/')
            .to_string();
        let series = self.series(method);
        methods.insert(path.to_string(), series.clone());
        series
    }

    fn series(&self, method: String) -> Arc<MethodSeries> {
        Arc::new(MethodSeries {
            latency: self
                .latency
                .get_or_create(&MethodLabels {
                    method: method.clone(),
                })
                .clone(),
            method,
            requests: self.requests.clone(),
            codes: std::array::from_fn(|_| OnceLock::new()),
        })
    }
}

impl MethodSeries {
    fn count(&self, code: tonic::Code) {
        let counter = match self.codes.get(code as usize) {
            Some(slot) => slot.get_or_init(|| self.counter(code)),
            // A code no version of gRPC has: counted, if not cached.
            None => &self.counter(code),
        };
        counter.inc();
    }

    fn counter(&self, code: tonic::Code) -> Counter {
        self.requests
            .get_or_create(&CallLabels {
                method: self.method.clone(),
                code: format!("{code:?}"),
            })
            .clone()
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService {
            inner,
            metrics: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<tonic::codegen::http::Request<B>> for GrpcMetricsService<S>
where
    S: tower_service::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        // A known method's series without allocating; otherwise the path,
        // to make one once the call's outcome says the method exists.
        let series = match self.metrics.known(request.uri().path()) {
            Some(series) => Ok(series),
            None => Err((request.uri().path().to_string(), self.metrics.clone())),
        };
        let started = std::time::Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            // A refusal comes back at once with its status in the headers;
            // a success carries it in the trailers, after the body.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unavailable,
            };
            let series = series.unwrap_or_else(|(path, metrics)| metrics.method(&path, code));
            series.latency.observe(started.elapsed().as_secs_f64());
            series.count(code);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_what_is_registered() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("berth_test_things", "Things counted", counter.clone());
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("berth_test_requests", "Requests", requests.clone());
        counter.inc_by(3);
        requests
            .get_or_create(&vec![("method".into(), "Apply".into())])
            .inc();
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let text = scrape(&addr.to_string()).await.unwrap();
        assert_eq!(
            value(&text, "berth_test_things_total", ""),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "berth_test_requests_total", "method=\"Apply\""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "berth_test_missing", ""), None);
    }

    #[test]
    fn unserved_paths_and_paths_past_the_limit_share_one_series() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(&mut registry, "berth_test");
        let call = |path: &str, code| metrics.method(path, code).count(code);
        // What no service serves gets no series of its own.
        for i in 0..1000 {
            call(
                &format!("/bogus.v1.Service/Method{i}"),
                tonic::Code::Unimplemented,
            );
        }
        for i in 0..MAX_METHODS + 50 {
            call(&format!("/berth.v1.Service/Method{i}"), tonic::Code::Ok);
        }
        call("/berth.v1.Service/Method0", tonic::Code::NotFound);
        let text = render(&registry);
        let counted = |method: &str, code: &str| {
            value(
                &text,
                "berth_test_requests_total",
                &format!("method=\"{method}\",code=\"{code}\""),
            )
        };
        assert_eq!(counted("other", "Unimplemented"), Some(1000.0));
        assert_eq!(counted("Service/Method0", "Ok"), Some(1.0));
        assert_eq!(counted("Service/Method0", "NotFound"), Some(1.0));
        assert_eq!(counted("Service/Method255", "Ok"), Some(1.0));
        assert_eq!(counted("Service/Method256", "Ok"), None);
        assert_eq!(counted("other", "Ok"), Some(50.0));
        let series = text
            .lines()
            .filter(|line| line.starts_with("berth_test_requests_total{"))
            .count();
        assert_eq!(series, MAX_METHODS + 3);
    }
}
