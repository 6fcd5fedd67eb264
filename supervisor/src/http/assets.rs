//! The web client's files, compiled into the binary: our page (`web/`) and guacamole-common-js with its
//! licence (bundled by `build.rs` from what `scripts/web-deps.sh` fetched from npm).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A file served as is.
#[derive(Clone, Copy)]
pub struct Asset {
    content_type: &'static str,
    body: &'static [u8],
}

pub const INDEX_HTML: Asset =
    Asset { content_type: "text/html; charset=utf-8", body: include_bytes!("../../../web/index.html") };
pub const APP_JS: Asset =
    Asset { content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../../web/app.js") };
pub const APP_CSS: Asset =
    Asset { content_type: "text/css; charset=utf-8", body: include_bytes!("../../../web/app.css") };
pub const GUACAMOLE_LICENSE: Asset = Asset {
    content_type: "text/plain; charset=utf-8",
    body: include_bytes!(concat!(env!("OUT_DIR"), "/guacamole-common-js.LICENSE")),
};
const GUACAMOLE_COMMON_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!(concat!(env!("OUT_DIR"), "/guacamole-common.js")),
};
/// guacamole-common-js's version as npm installed it (empty when not bundled).
pub const GUACAMOLE_COMMON_JS_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/guacamole-common-js.version"));
/// False when the build found no guacamole-common-js: the page then cannot run.
pub const GUACAMOLE_COMMON_JS_BUNDLED: bool = !GUACAMOLE_COMMON_JS.body.is_empty();

/// Scripts, styles and connections only from this origin; images from `blob:`/`data:` URLs, which is how
/// guacamole-common-js draws what the tunnel delivers.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'";

pub fn page(asset: Asset) -> Response {
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Small files that change with the binary: revalidate every time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The page's URL may carry an access key or a token in its fragment; never leak the URL.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

pub fn guacamole_common_js() -> Response {
    if !GUACAMOLE_COMMON_JS_BUNDLED {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "guacamole-common-js was not bundled when guacr was built: run scripts/web-deps.sh, then rebuild\n",
        )
            .into_response();
    }
    page(GUACAMOLE_COMMON_JS)
}
