//! Connects to a guacd-compatible server (guacr or guacd) as a Guacamole client, opens a VNC session,
//! waits for the first frame and saves what a user would see as a PNG.
//!
//! `guacr-snapshot [--server 127.0.0.1:4822] [--host 127.0.0.1] [--port 5901] [--password guacpass]
//!                 [--width 1024] [--height 768] [--out snapshot.png]`

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use guacr_tests::GuacClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut server = "127.0.0.1:4822".to_string();
    let mut params: Vec<(String, String)> = vec![
        ("hostname".into(), "127.0.0.1".into()),
        ("port".into(), "5901".into()),
        ("password".into(), "guacpass".into()),
    ];
    let (mut width, mut height) = (1024u32, 768u32);
    let mut out = "snapshot.png".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => server = value,
            "--host" => params[0].1 = value,
            "--port" => params[1].1 = value,
            "--password" => params[2].1 = value,
            "--width" => width = value.parse()?,
            "--height" => height = value.parse()?,
            "--out" => out = value,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let started = Instant::now();
    let mut client = GuacClient::connect(server.parse()?).await?;
    let id = client.handshake("vnc", &params, width, height).await?;
    let ready = started.elapsed();
    client
        .wait_until_named("first frame", Duration::from_secs(20), |s| s.frames >= 1 || s.last_error().is_some())
        .await?;
    if let Some(error) = client.last_error() {
        bail!("server sent error {}: {}", error.status, error.message);
    }
    let first_frame = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.save_png(&out)?;
    let (w, h) = client.state().display.size();
    println!("connection {id}: ready after {ready:?}, first frame after {first_frame:?}; {w}x{h} saved to {out}");
    client.disconnect().await.ok();
    Ok(())
}
