//! The HTTP entry: the built-in web client, the WebSocket tunnel that guacamole-common-js speaks
//! (`/websocket-tunnel`), the list of named connections for a user (`/api/connections`), session recordings
//! (`/recordings/<path>`, with `[recordings]`), Prometheus metrics (`/metrics`) and a health check
//! (`/healthz`). It runs on the supervisor's tokio runtime beside the guacd-compatible TCP entry and shares
//! its sessions, workers and metrics.
//!
//! Who may open what: a signed token ([`token`]) names its protocol and parameters itself; a named
//! connection from the configuration file needs the access key of a user allowed to open it
//! ([`settings`]). Either way the target comes from guacr's side, never from the request.

pub mod assets;
mod listener;
mod recordings;
pub mod settings;
pub mod token;
mod tunnel;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use tracing::{error, info, warn};

use self::settings::{Overrides, WebSettings};
use crate::config::Config;
use crate::limits::ConnectionLimits;
use crate::session::Shared;

/// The HTTP entry, checked and bound before guacr detaches, not yet serving.
pub struct Prepared {
    listener: Option<std::net::TcpListener>,
    settings: WebSettings,
}

/// Reads the configuration file and environment and binds the HTTP port, so every mistake is reported
/// to the person starting guacr.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let overrides = Overrides {
        http_bind: config.http_bind.clone(),
        token_key: std::env::var("GUACR_TOKEN_KEY").ok().filter(|k| !k.is_empty()),
    };
    let settings = WebSettings::load(config.config_file.as_deref(), &overrides)?;
    let listener = match settings.bind {
        Some(addr) => match std::net::TcpListener::bind(addr) {
            Ok(listener) => {
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            // Only the default may be busy (another web server on 8080 beside a guacd replacement is
            // common): the TCP entry still starts. A configured address must work.
            Err(e) if !settings.bind_explicit => {
                warn!(address = %addr, error = %e, "Web client not started: the default HTTP address is busy (set --http-bind)");
                None
            }
            Err(e) => anyhow::bail!("cannot serve HTTP on {addr}: {e} (set another with --http-bind, or \"off\")"),
        },
        None => None,
    };
    Ok(Prepared { listener, settings })
}

/// State of every HTTP request.
pub(crate) struct WebState {
    pub shared: Arc<Shared>,
    pub settings: WebSettings,
    /// The TCP entry's connection limits: a tunnel holds a place for its whole life.
    pub limits: Arc<ConnectionLimits>,
}

/// Starts serving on the runtime (returns at once). Tunnels count against `limits`, shared with the TCP
/// entry.
pub fn start(prepared: Prepared, shared: Arc<Shared>, limits: Arc<ConnectionLimits>) -> anyhow::Result<()> {
    let Some(listener) = prepared.listener else {
        info!("HTTP entry off (no web client, WebSocket tunnel or metrics)");
        return Ok(());
    };
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let address = listener.local_addr()?;
    let settings = prepared.settings;
    info!(
        %address,
        guacamole_common_js = assets::GUACAMOLE_COMMON_JS_VERSION,
        users = settings.users.len(),
        connections = settings.connections.len(),
        tokens = settings.token_key.is_some(),
        recordings = ?settings.recordings.as_ref().map(|r| r.dir.display().to_string()),
        "Web client and WebSocket tunnel listening"
    );
    if !assets::GUACAMOLE_COMMON_JS_BUNDLED {
        warn!("guacamole-common-js was not bundled at build time: the web page cannot run (run scripts/web-deps.sh, then rebuild)");
    }
    for protocol in crate::protocols::Protocol::ALL {
        shared.metrics.declare_protocol(protocol.name());
    }
    let state = Arc::new(WebState { shared, settings, limits });
    let app = router(state.clone());
    // Recording requests are answered by the listener itself (sendfile); `tap_io` only gives axum's
    // ConnectInfo the peer address of our listener's connections.
    let listener = axum::serve::ListenerExt::tap_io(listener::EntryListener::start(listener, state)?, |_| {});
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            error!(error = %e, "HTTP entry failed");
        }
    });
    Ok(())
}

fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(|| async { assets::page(assets::INDEX_HTML) }))
        .route("/index.html", get(|| async { assets::page(assets::INDEX_HTML) }))
        .route("/app.js", get(|| async { assets::page(assets::APP_JS) }))
        .route("/app.css", get(|| async { assets::page(assets::APP_CSS) }))
        .route("/vendor/guacamole-common.js", get(|| async { assets::guacamole_common_js() }))
        .route("/vendor/guacamole-common-js/LICENSE", get(|| async { assets::page(assets::GUACAMOLE_LICENSE) }))
        .route("/api/connections", get(list_connections))
        .route("/websocket-tunnel", any(tunnel::endpoint))
        .route("/metrics", get(metrics))
        .route("/recordings/{*path}", get(recordings::serve))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(close_after_response))
        .with_state(state)
}

/// Every response but a WebSocket upgrade closes its connection, so each request reaches the listener
/// on a fresh one (where recordings are sent with sendfile, `listener.rs`).
async fn close_after_response(mut response: Response) -> Response {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[derive(Serialize)]
struct ConnectionList<'a> {
    user: &'a str,
    tokens: bool,
    connections: Vec<ConnectionInfo<'a>>,
}

#[derive(Serialize)]
struct ConnectionInfo<'a> {
    name: &'a str,
    protocol: &'static str,
    description: &'a str,
    read_only: bool,
}

/// The named connections the holder of the access key (`Authorization: Bearer KEY`) may open.
async fn list_connections(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(user) = state.settings.user_for_key(key) else {
        let mut response =
            (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "access key not accepted"}))).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return no_store(response);
    };
    let connections = state
        .settings
        .connections_for(user)
        .map(|c| ConnectionInfo {
            name: &c.name,
            protocol: c.protocol.name(),
            description: &c.description,
            read_only: c.read_only,
        })
        .collect();
    let list = ConnectionList { user: &user.name, tokens: state.settings.token_key.is_some(), connections };
    no_store(Json(list).into_response())
}

async fn metrics(State(state): State<Arc<WebState>>) -> Response {
    let mut response = state.shared.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `guacr token`: prints a signed token, for integrators' scripts and the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Protocol of the connection (vnc, ...).
    #[arg(long)]
    protocol: String,
    /// A connection parameter, NAME=VALUE with guacd's names (repeat for each).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// The user may watch but not control.
    #[arg(long)]
    read_only: bool,
    /// Join the live session with this connection ID (`$<uuid>`, from its owner's `ready`) instead of
    /// starting one; only --read-only matters then.
    #[arg(long, value_name = "CONNECTION_ID")]
    join: Option<String>,
}

pub fn print_token(config: &Config, args: &TokenArgs) -> std::process::ExitCode {
    match make_token(config, args) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guacr token: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn make_token(config: &Config, args: &TokenArgs) -> anyhow::Result<String> {
    let overrides = Overrides {
        http_bind: Some("off".into()),
        token_key: std::env::var("GUACR_TOKEN_KEY").ok().filter(|k| !k.is_empty()),
    };
    let settings = WebSettings::load(config.config_file.as_deref(), &overrides)?;
    let key = settings
        .token_key
        .ok_or_else(|| anyhow::anyhow!("no token key: set [tokens] key in --config FILE, or GUACR_TOKEN_KEY"))?;
    let protocol = crate::protocols::Protocol::from_name(&args.protocol)
        .ok_or_else(|| anyhow::anyhow!("protocol {:?} is not supported", args.protocol))?;
    let known = protocol.parameter_names();
    let mut parameters = BTreeMap::new();
    for param in &args.params {
        let (name, value) =
            param.split_once('=').ok_or_else(|| anyhow::anyhow!("--param {param:?} is not NAME=VALUE"))?;
        anyhow::ensure!(known.contains(&name), "{name:?} is not a {} parameter", protocol.name());
        parameters.insert(name.to_string(), value.to_string());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let payload = token::TokenPayload {
        protocol: protocol.name().to_string(),
        parameters,
        expiry: now.saturating_add(args.ttl),
        read_only: args.read_only,
        join: args.join.clone(),
    };
    Ok(token::sign(&payload, &key))
}
