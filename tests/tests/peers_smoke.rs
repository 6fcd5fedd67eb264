//! The test peers themselves, without guacr: all three VNC servers listen, and the static display
//! read straight from its X server shows the plaid root and the xterm's text. This checks the
//! harness (peers.sh, the XWD parser) before any guacr test relies on it.

use guacr_tests::peers::{self, STATIC_ROOT_BG, STATIC_ROOT_FG};
use guacr_tests::{artifact_dir, compare, x11_screenshot};

#[test]
fn all_three_peers_are_up() {
    for p in [peers::changing(), peers::static_screen(), peers::typing()] {
        p.require_up();
    }
}

#[test]
fn static_display_screenshot_shows_root_and_xterm() {
    let peer = peers::static_screen();
    peer.require_up();
    let img = x11_screenshot(&peer.display).expect("xwd screenshot of the static display");
    let path = artifact_dir().join("peers_smoke_static.png");
    img.save_png(&path).expect("saving the screenshot");
    assert_eq!((img.width, img.height), (1024, 768), "saved as {}", path.display());

    let total = (img.width * img.height) as usize;
    let fg = img.count_color(STATIC_ROOT_FG, 0);
    let bg = img.count_color(STATIC_ROOT_BG, 0);
    // The 16x16 plaid covers everything outside the xterm; both colours take a large share.
    assert!(fg > total / 20, "root foreground {STATIC_ROOT_FG:?} on only {fg} pixels; see {}", path.display());
    assert!(bg > total / 20, "root background {STATIC_ROOT_BG:?} on only {bg} pixels; see {}", path.display());

    // The xterm (black background, white text) sits at +40+40.
    let xterm = img.crop(40, 40, 300, 60);
    let black = xterm.count_color([0, 0, 0], 0);
    let bright = xterm.iter_pixels().filter(|p| p.iter().all(|c| *c >= 0xc0)).count();
    assert!(black > 300 * 60 / 2, "no xterm background at +40+40 ({black} black pixels); see {}", path.display());
    assert!(bright > 100, "no xterm text at +40+40 ({bright} bright pixels); see {}", path.display());
    // Anti-aliased text gives grey levels: it is text, not a solid block.
    assert!(
        xterm.distinct_colors() > 5,
        "xterm region has {} colours; see {}",
        xterm.distinct_colors(),
        path.display()
    );

    // Nothing on it changes by itself.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let again = x11_screenshot(&peer.display).expect("second screenshot");
    let diff = compare(&img, &again, 0);
    assert!(diff.is_identical(), "static display changed by itself: {diff}");
}

#[test]
fn changing_display_changes() {
    let peer = peers::changing();
    peer.require_up();
    let a = x11_screenshot(&peer.display).expect("xwd of the changing display");
    assert_eq!((a.width, a.height), (1024, 768));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = x11_screenshot(&peer.display).expect("xwd of the changing display");
        if compare(&a, &b, 0).differing_pixels > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "display {} did not change within 5 s", peer.display);
    }
}
