//! A test host for the Larder Spin component: wasmtime 48 with WASI p2 + p3, WASI HTTP p3,
//! Spin key-value (in memory) and Spin variables, and an outbound allow-list. Every
//! request gets a fresh instance, as in Spin; the key-value store outlives them, and each
//! request carries the `spin-*` fields Spin adds.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::Result;
use wasmtime::component::{Accessor, Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

mod spin {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "larder:edge-host/host",
        imports: { default: trappable },
        with: { "spin:key-value/key-value.store": super::KvHandle },
    });
}
use spin::spin::key_value::key_value;
use spin::spin::variables::variables;

/// An open store: just its label (all labels share one map here).
pub struct KvHandle;

/// The shared in-memory key-value store.
pub type Kv = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// The fields Spin adds to every request it hands a component.
pub const SPIN_HEADERS: [&str; 7] = [
    "spin-base-path",
    "spin-client-addr",
    "spin-component-route",
    "spin-full-url",
    "spin-matched-route",
    "spin-path-info",
    "spin-raw-component-route",
];

/// Adds [`SPIN_HEADERS`] as Spin sets them for the manifest's route `/...` (base path `/`)
/// and a client at 127.0.0.1:54321.
pub fn add_spin_headers<B>(req: &mut http::Request<B>) {
    let full_url = req.uri().to_string();
    let path = req.uri().path().to_owned();
    for (name, value) in [
        ("spin-base-path", "/".to_owned()),
        ("spin-client-addr", "127.0.0.1:54321".to_owned()),
        ("spin-component-route", String::new()),
        ("spin-full-url", full_url),
        ("spin-matched-route", "/...".to_owned()),
        ("spin-path-info", path),
        ("spin-raw-component-route", "/...".to_owned()),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, v);
        }
    }
}

/// The authorities an allow-list admits. Entries are written as in `allowed_outbound_hosts`
/// (`scheme://host:port`) or as a bare `host:port`; as in Spin, one entry with a path
/// (`has a path but is not allowed to`) invalidates the whole list, so nothing is admitted.
fn allow_list(entries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in entries {
        let rest = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            eprintln!(
                "edge host: {e:?} has a path but is not allowed to: no outbound request is allowed"
            );
            return Vec::new();
        }
        out.push(authority.to_owned());
    }
    out
}

/// Outbound HTTP allowed only to these `host:port` authorities.
struct Hooks {
    allowed: Vec<String>,
    attempts: Arc<Mutex<Vec<String>>>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                                + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(authority.clone());
        if !self.allowed.contains(&authority) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        Box::new(async move {
            // The guest's body is read whole before the request leaves. The test origins
            // answer without reading request bodies and then close: a body still on its way
            // makes that close a reset, which can destroy their answer (an incomplete message)
            // at random. A guest that never finishes its body hangs here instead of passing.
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(
                parts,
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// Per-instance state.
pub struct State {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    spin: SpinCtx,
}

pub struct SpinCtx {
    kv: Kv,
    vars: HashMap<String, String>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

struct SpinHost;

impl HasData for SpinHost {
    type Data<'a> = SpinView<'a>;
}

pub struct SpinView<'a> {
    table: &'a mut ResourceTable,
    spin: &'a mut SpinCtx,
}

fn spin_view(s: &mut State) -> SpinView<'_> {
    SpinView {
        table: &mut s.table,
        spin: &mut s.spin,
    }
}

impl key_value::Host for SpinView<'_> {}

impl key_value::HostStore for SpinView<'_> {
    fn drop(&mut self, rep: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

fn kv_of<T>(store: &Accessor<T, SpinHost>) -> Kv {
    store.with(|mut v| v.get().spin.kv.clone())
}

impl<T> key_value::HostStoreWithStore<T> for SpinHost {
    async fn open(
        store: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvHandle>, key_value::Error>> {
        if label != "default" {
            return Ok(Err(key_value::Error::NoSuchStore));
        }
        Ok(Ok(store.with(|mut v| v.get().table.push(KvHandle))?))
    }

    async fn get(
        store: &Accessor<T, Self>,
        _self: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        Ok(Ok(kv_of(store).lock().unwrap().get(&key).cloned()))
    }

    async fn set(
        store: &Accessor<T, Self>,
        _self: Resource<KvHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        kv_of(store).lock().unwrap().insert(key, value);
        Ok(Ok(()))
    }

    async fn delete(
        store: &Accessor<T, Self>,
        _self: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        kv_of(store).lock().unwrap().remove(&key);
        Ok(Ok(()))
    }

    async fn exists(
        store: &Accessor<T, Self>,
        _self: Resource<KvHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        Ok(Ok(kv_of(store).lock().unwrap().contains_key(&key)))
    }

    async fn get_keys(
        _store: &Accessor<T, Self>,
        _self: Resource<KvHandle>,
    ) -> wasmtime::Result<(
        wasmtime::component::StreamReader<String>,
        wasmtime::component::FutureReader<Result<(), key_value::Error>>,
    )> {
        wasmtime::bail!("get-keys is not used by Larder and not provided by this test host")
    }
}

impl variables::Host for SpinView<'_> {}

impl<T> variables::HostWithStore<T> for SpinHost {
    async fn get(
        store: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, variables::Error>> {
        Ok(store.with(|mut v| {
            v.get()
                .spin
                .vars
                .get(&name)
                .cloned()
                .ok_or(variables::Error::Undefined(name))
        }))
    }
}

/// A wall clock stopped at one instant, so tests can move time (the component reads the
/// WASI clock, as in production).
struct FixedClock(u64);

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::from_secs(self.0)
    }
}

/// Compiling the component takes seconds in a debug host: once per process and path.
fn compiled(path: &std::path::Path) -> Result<(Engine, Component)> {
    type Cache = Mutex<HashMap<std::path::PathBuf, (Engine, Component)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(hit) = cache.get(path) {
        return Ok(hit.clone());
    }
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    let engine = Engine::new(&config)?;
    let component = Component::from_file(&engine, path)
        .with_context(|| format!("loading {}", path.display()))?;
    cache.insert(path.to_owned(), (engine.clone(), component.clone()));
    Ok((engine, component))
}

/// The loaded component, ready to serve requests.
pub struct EdgeHost {
    engine: Engine,
    pre: ServicePre<State>,
    pub kv: Kv,
    vars: HashMap<String, String>,
    allowed: Vec<String>,
    /// The wall clock the next instances see (seconds since the epoch); `None`: real time.
    pub clock: Mutex<Option<u64>>,
    /// Every outbound authority the component tried, in order (allowed or not).
    pub attempts: Arc<Mutex<Vec<String>>>,
    /// Time to compile and link the component.
    pub load_time: Duration,
}

impl EdgeHost {
    /// Loads the component at `path` with these Spin variables, allowing outbound HTTP to
    /// the listed `host:port` authorities (or `scheme://host:port` entries) only.
    pub fn load(path: &std::path::Path, vars: &[(&str, &str)], allowed: &[String]) -> Result<Self> {
        let start = Instant::now();
        let (engine, component) = compiled(path)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        key_value::add_to_linker::<_, SpinHost>(&mut linker, spin_view)?;
        variables::add_to_linker::<_, SpinHost>(&mut linker, spin_view)?;
        let pre = ServicePre::new(linker.instantiate_pre(&component)?)?;
        Ok(EdgeHost {
            engine,
            pre,
            kv: Arc::default(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allowed: allow_list(allowed),
            attempts: Arc::default(),
            clock: Mutex::new(None),
            load_time: start.elapsed(),
        })
    }

    /// Serves one request on a fresh instance and returns the whole response. The request
    /// gets the `spin-*` fields first, as Spin does.
    pub async fn handle(&self, mut req: http::Request<Bytes>) -> Result<http::Response<Bytes>> {
        add_spin_headers(&mut req);
        let state = State {
            table: ResourceTable::new(),
            wasi: {
                let mut b = WasiCtxBuilder::new();
                b.inherit_stderr();
                if let Some(at) = *self.clock.lock().unwrap_or_else(|p| p.into_inner()) {
                    b.wall_clock(FixedClock(at));
                }
                b.build()
            },
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                allowed: self.allowed.clone(),
                attempts: self.attempts.clone(),
            },
            spin: SpinCtx {
                kv: self.kv.clone(),
                vars: self.vars.clone(),
            },
        };
        let mut store = Store::new(&self.engine, state);
        let service = self.pre.instantiate_async(&mut store).await?;
        let (req, io) = {
            let hooks = &mut store.data_mut().hooks;
            wasmtime_wasi_http::p3::Request::from_http(
                hooks,
                req.map(|b| {
                    Full::new(b).map_err(
                        |never: std::convert::Infallible| -> wasmtime_wasi_http::Error {
                            match never {}
                        },
                    )
                }),
            )
        };
        store
            .run_concurrent(async move |accessor| -> Result<http::Response<Bytes>> {
                let _io = tokio::spawn(io);
                let res = service
                    .handle(accessor, req)
                    .await?
                    .map_err(|e| wasmtime::format_err!("component failed: {e:?}"))?;
                let res = accessor.with(|mut s| res.into_http(&mut s, async { Ok(()) }))?;
                let (parts, body) = res.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| wasmtime::format_err!("response body: {e:?}"))?
                    .to_bytes();
                Ok(http::Response::from_parts(parts, body))
            })
            .await?
    }
}
