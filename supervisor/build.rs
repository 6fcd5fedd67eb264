//! Bundles guacamole-common-js (fetched from npm by `scripts/web-deps.sh` into `web/node_modules`) and
//! its licence into the `guacr` binary. Without it the build still succeeds (with a warning) and the web
//! page explains what is missing, so the TCP entry never depends on npm.

use std::path::PathBuf;

const PACKAGE: &str = "node_modules/guacamole-common-js";
const SCRIPT: &str = "dist/esm/guacamole-common.min.js";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let web = manifest.join("../web");
    // The whole directory: our page files and whatever npm put under node_modules.
    println!("cargo:rerun-if-changed={}", web.display());
    let package = web.join(PACKAGE);
    let script = std::fs::read(package.join(SCRIPT)).unwrap_or_default();
    let licence = std::fs::read(package.join("LICENSE")).unwrap_or_default();
    let version = std::fs::read_to_string(package.join("package.json"))
        .ok()
        .and_then(|json| {
            let start = json.find("\"version\"")?;
            let rest = &json[start + 9..];
            let open = rest.find('"')?;
            let close = rest[open + 1..].find('"')?;
            Some(rest[open + 1..open + 1 + close].to_string())
        })
        .unwrap_or_default();
    if script.is_empty() || licence.is_empty() {
        println!(
            "cargo:warning=guacamole-common-js is not in web/{PACKAGE}: the web client will not work; \
             run scripts/web-deps.sh (npm) and rebuild"
        );
    }
    std::fs::write(out.join("guacamole-common.js"), &script).expect("writing OUT_DIR");
    std::fs::write(out.join("guacamole-common-js.LICENSE"), &licence).expect("writing OUT_DIR");
    std::fs::write(out.join("guacamole-common-js.version"), version).expect("writing OUT_DIR");
}
