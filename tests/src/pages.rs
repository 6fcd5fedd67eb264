//! A tiny HTTP/1.1 server on 127.0.0.1 serving fixed test pages, started by each RBI test itself (the
//! browser inside guacr's rbi worker loads them). One request per connection, `Connection: close`.
//!
//! Pages (colours are what the tests look for in the client's composited image):
//! - `/colour/RRGGBB`: the whole page in that colour.
//! - `/button`: red ([`RED`]); a button in the top-left 300×200 pixels turns the page blue ([`BLUE`]).
//! - `/type`: white with a large text field that has the focus; the page turns green ([`GREEN`]) when
//!   the field holds exactly [`TYPED_TEXT`].
//! - `/download`: yellow ([`YELLOW`]), one big link to `/file.bin` (an attachment).
//! - `/cookie`: green when the cookie `rbi=1` exists, red otherwise; `/cookie?set` sets it first.
//! - `/upload`: grey, one big file input; green once it holds [`UPLOAD_NAME`] with [`UPLOAD_TEXT`].
//! - `/tall`: 1200 pixels of red above 3000 of blue (scrolling).
//! - `/dialog`: red; after an `alert`, a cancelled `confirm` and a cancelled `prompt` it turns green.
//! - `/popup`: grey; a click anywhere calls `window.open('/colour/0000c8')`.
//! - `/anim`: a box moving and changing colour every animation frame (for the benchmark).
//! - `/checker`: a canvas filling the viewport with a checkerboard of single pixels, black where x + y is
//!   even, white where it is odd ([`checker_pixel`]): exact only through a lossless path.
//! - `/hog`: grey; a click turns it red and starts filling ever more 32 MiB typed arrays, without end
//!   (for the per-session memory limit).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const RED: [u8; 3] = [200, 0, 0];
pub const GREEN: [u8; 3] = [0, 200, 0];
pub const BLUE: [u8; 3] = [0, 0, 200];
pub const YELLOW: [u8; 3] = [200, 200, 0];
pub const GREY: [u8; 3] = [128, 128, 128];
/// The block page's background (`worker-rbi`'s `block_page`).
pub const BLOCKED: [u8; 3] = [0x7f, 0x1d, 0x1d];
/// The file the `/upload` page waits for in its file input: name and content.
pub const UPLOAD_NAME: &str = "hello.txt";
pub const UPLOAD_TEXT: &str = "guacr upload test";
/// What `/file.bin` (the download) holds.
pub fn download_content() -> Vec<u8> {
    b"guacr rbi download test\n".repeat(64)
}
/// What the `/type` page waits for: ASCII, Latin-1 and characters beyond Latin-1 (the euro sign, CJK).
pub const TYPED_TEXT: &str = "Grüße €5 中文";

/// The `/checker` page's colour at (`x`, `y`).
pub fn checker_pixel(x: u32, y: u32) -> [u8; 3] {
    if (x + y).is_multiple_of(2) {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// A running page server; stopped on drop.
pub struct PageServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PageServer {
    /// Listens on a free port of 127.0.0.1. Must run inside a tokio runtime.
    pub async fn start() -> Result<PageServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the page server")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone()));
            }
        });
        Ok(PageServer { addr, requests, task })
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request targets served so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn serve(mut stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    if let Ok(mut log) = log.lock() {
        log.push(target.clone());
    }
    let (status, content_type, extra, body) = page(&target);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn html(style: &str, body: &str, script: &str) -> Vec<u8> {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>guacr test</title><style>html,body{{margin:0;\
         height:100%;overflow:hidden}}{style}</style></head><body>{body}<script>{script}</script></body></html>"
    )
    .into_bytes()
}

fn hex(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

type Response = (&'static str, &'static str, String, Vec<u8>);

fn page(target: &str) -> Response {
    let ok = |body: Vec<u8>| ("200 OK", "text/html; charset=utf-8", String::new(), body);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(colour) = path.strip_prefix("/colour/") {
        let valid = colour.len() == 6 && colour.chars().all(|c| c.is_ascii_hexdigit());
        let colour = if valid { colour } else { "000000" };
        return ok(html(&format!("body{{background:#{colour}}}"), "", ""));
    }
    match path {
        "/button" => ok(html(
            &format!(
                "body{{background:{}}}button{{position:absolute;left:0;top:0;width:300px;height:200px;font-size:40px}}",
                hex(RED)
            ),
            "<button id=\"b\">Click</button>",
            &format!(
                "document.getElementById('b').onclick = () => {{ document.body.style.background = '{}'; }};",
                hex(BLUE)
            ),
        )),
        "/type" => ok(html(
            &format!(
                "body{{background:#fff}}input{{position:absolute;left:10px;top:10px;width:900px;height:160px;\
                 font-size:120px;border:0;outline:0;background:#fff;color:#000}}body.done{{background:{}}}",
                hex(GREEN)
            ),
            "<input id=\"t\" autofocus autocomplete=\"off\">",
            &format!(
                "const t = document.getElementById('t'); t.focus(); \
                 t.addEventListener('input', () => {{ document.body.className = t.value === {:?} ? 'done' : ''; }});",
                TYPED_TEXT
            ),
        )),
        "/download" => ok(html(
            &format!("body{{background:{}}}a{{display:block;width:100%;height:100%}}", hex(YELLOW)),
            "<a href=\"/file.bin\" download=\"file.bin\">&nbsp;</a>",
            "",
        )),
        "/file.bin" => (
            "200 OK",
            "application/octet-stream",
            "Content-Disposition: attachment; filename=\"file.bin\"\r\n".into(),
            download_content(),
        ),
        "/cookie" => ok(html(
            &format!("body{{background:{}}}body.set{{background:{}}}", hex(RED), hex(GREEN)),
            "",
            &format!(
                "const has = document.cookie.split('; ').includes('rbi=1'); \
                 if ({} && !has) {{ document.cookie = 'rbi=1; path=/; max-age=3600'; location.replace('/cookie'); }} \
                 else if (has) {{ document.body.className = 'set'; }}",
                query == "set"
            ),
        )),
        "/upload" => ok(html(
            &format!(
                "body{{background:{}}}body.done{{background:{}}}input{{position:absolute;left:0;top:0;width:100%;\
                 height:100%;font-size:60px}}",
                hex(GREY),
                hex(GREEN)
            ),
            "<input id=\"f\" type=\"file\">",
            &format!(
                "const f = document.getElementById('f'); f.onchange = async () => {{ const file = f.files[0]; \
                 if (file && file.name === {UPLOAD_NAME:?} && (await file.text()) === {UPLOAD_TEXT:?}) \
                 document.body.className = 'done'; }};"
            ),
        )),
        "/tall" => ok(html(
            &format!(
                "html,body{{height:auto;overflow:auto}}#top{{height:1200px;background:{}}}#bottom{{height:3000px;\
                 background:{}}}",
                hex(RED),
                hex(BLUE)
            ),
            "<div id=\"top\"></div><div id=\"bottom\"></div>",
            "",
        )),
        "/dialog" => ok(html(
            &format!("body{{background:{}}}", hex(RED)),
            "",
            &format!(
                "setTimeout(() => {{ alert('hello'); if (!confirm('sure?') && prompt('name?') === null) \
                 document.body.style.background = '{}'; }}, 100);",
                hex(GREEN)
            ),
        )),
        "/popup" => ok(html(
            &format!("body{{background:{}}}", hex(GREY)),
            "",
            &format!("document.body.onclick = () => window.open('/colour/{}');", &hex(BLUE)[1..]),
        )),
        "/anim" => ok(html(
            "body{background:#fff}#box{position:absolute;width:200px;height:200px}",
            "<div id=\"box\"></div>",
            "let n = 0; function step() { n++; const b = document.getElementById('box'); \
             b.style.left = (n * 7 % 600) + 'px'; b.style.top = (n * 3 % 400) + 'px'; \
             b.style.background = 'hsl(' + (n * 5 % 360) + ',90%,50%)'; requestAnimationFrame(step); } \
             requestAnimationFrame(step);",
        )),
        "/checker" => ok(html(
            "canvas{position:absolute;left:0;top:0}",
            "<canvas id=\"c\"></canvas>",
            "const c = document.getElementById('c'); function draw() { const w = innerWidth, h = innerHeight; \
             c.width = w; c.height = h; const ctx = c.getContext('2d'); const img = ctx.createImageData(w, h); \
             for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) { const v = (x + y) % 2 ? 255 : 0; \
             const i = (y * w + x) * 4; img.data[i] = img.data[i + 1] = img.data[i + 2] = v; img.data[i + 3] = 255; } \
             ctx.putImageData(img, 0, 0); } draw(); addEventListener('resize', draw);",
        )),
        "/hog" => ok(html(
            &format!("body{{background:{}}}body.hog{{background:{}}}", hex(GREY), hex(RED)),
            "",
            "const kept = []; function more() { const a = new Uint8Array(32 << 20); a.fill(7); kept.push(a); \
             setTimeout(more, 20); } \
             document.body.onclick = () => { if (!kept.length) { document.body.className = 'hog'; more(); } };",
        )),
        _ => ("404 Not Found", "text/plain", String::new(), b"not found\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_pages_over_http() {
        let server = PageServer::start().await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET /colour/00c800 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("background:#00c800"));
        assert_eq!(server.requests(), vec!["/colour/00c800".to_string()]);
        assert!(page("/nothing").0.starts_with("404"));
        assert!(String::from_utf8(page("/cookie?set").3).unwrap().contains("if (true"));
    }
}
