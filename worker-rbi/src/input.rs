//! Guacamole input as CDP `Input.*` events: X11 keysyms become `Input.dispatchKeyEvent` (with the
//! character as `text`, so any Unicode character types), the button mask becomes mouse presses, releases,
//! moves and wheel steps.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// CDP modifier bits.
const ALT: u32 = 1;
const CTRL: u32 = 2;
const META: u32 = 4;
const SHIFT: u32 = 8;

/// Guacamole mouse mask bits.
const LEFT: u32 = 1;
const MIDDLE: u32 = 2;
const RIGHT: u32 = 4;
const WHEEL_UP: u32 = 8;
const WHEEL_DOWN: u32 = 16;
/// Pixels per wheel step (one notch, as Chromium scrolls for a mouse wheel).
const WHEEL_STEP: i32 = 120;
const DOUBLE_CLICK: Duration = Duration::from_millis(500);

/// A key as CDP names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// DOM `key` value ("a", "Enter", "ArrowLeft").
    pub key: String,
    /// DOM `code` value where it is obvious, else empty.
    pub code: String,
    /// Windows virtual key code (what Chromium's editing and shortcuts look at).
    pub vk: u32,
    /// What the key types, if anything.
    pub text: Option<String>,
    /// The modifier bit this key is, if it is one.
    modifier: u32,
}

/// What a key press asks the worker to do besides (or instead of) typing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    Back,
    Forward,
    Copy,
    Paste,
}

/// The character an X11 keysym types: Latin-1 keysyms are their code point, `0x01000000 + U` is U.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0000..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000).filter(|c| !c.is_control()),
        _ => None,
    }
}

/// Describes a keysym for CDP; `None` for keysyms we do not know.
pub fn key_for(keysym: u32) -> Option<Key> {
    let named = |key: &str, code: &str, vk: u32, text: Option<&str>, modifier: u32| Key {
        key: key.into(),
        code: code.into(),
        vk,
        text: text.map(String::from),
        modifier,
    };
    let key = match keysym {
        0xff08 => named("Backspace", "Backspace", 8, None, 0),
        0xff09 => named("Tab", "Tab", 9, None, 0),
        0xff0d | 0xff8d => named("Enter", "Enter", 13, Some("\r"), 0),
        0xff1b => named("Escape", "Escape", 27, None, 0),
        0xffff => named("Delete", "Delete", 46, None, 0),
        0xff50 => named("Home", "Home", 36, None, 0),
        0xff51 => named("ArrowLeft", "ArrowLeft", 37, None, 0),
        0xff52 => named("ArrowUp", "ArrowUp", 38, None, 0),
        0xff53 => named("ArrowRight", "ArrowRight", 39, None, 0),
        0xff54 => named("ArrowDown", "ArrowDown", 40, None, 0),
        0xff55 => named("PageUp", "PageUp", 33, None, 0),
        0xff56 => named("PageDown", "PageDown", 34, None, 0),
        0xff57 => named("End", "End", 35, None, 0),
        0xff63 => named("Insert", "Insert", 45, None, 0),
        0xffe1 => named("Shift", "ShiftLeft", 16, None, SHIFT),
        0xffe2 => named("Shift", "ShiftRight", 16, None, SHIFT),
        0xffe3 => named("Control", "ControlLeft", 17, None, CTRL),
        0xffe4 => named("Control", "ControlRight", 17, None, CTRL),
        0xffe9 | 0xff7e => named("Alt", "AltLeft", 18, None, ALT),
        0xffea | 0xfe03 => named("Alt", "AltRight", 18, None, ALT),
        0xffe7 | 0xffeb => named("Meta", "MetaLeft", 91, None, META),
        0xffe8 | 0xffec => named("Meta", "MetaRight", 92, None, META),
        0xffbe..=0xffc9 => {
            let n = keysym - 0xffbe + 1;
            named(&format!("F{n}"), &format!("F{n}"), 111 + n, None, 0)
        }
        _ => {
            let c = keysym_char(keysym)?;
            let (code, vk) = match c {
                'a'..='z' | 'A'..='Z' => {
                    let upper = c.to_ascii_uppercase();
                    (format!("Key{upper}"), upper as u32)
                }
                '0'..='9' => (format!("Digit{c}"), c as u32),
                ' ' => ("Space".into(), 32),
                _ => (String::new(), 0),
            };
            Key { key: c.to_string(), code, vk, text: Some(c.to_string()), modifier: 0 }
        }
    };
    Some(key)
}

/// Keyboard and mouse state of one session, producing CDP `(method, params)` pairs.
#[derive(Debug, Default)]
pub struct Input {
    modifiers: u32,
    mask: u32,
    position: (i32, i32),
    last_click: Option<(Instant, u32, (i32, i32), u32)>,
}

impl Input {
    pub fn new() -> Input {
        Input::default()
    }

    /// A shortcut the worker handles itself, instead of passing the key on.
    pub fn shortcut(&self, keysym: u32) -> Option<Shortcut> {
        let mods = self.modifiers;
        match keysym {
            0xff51 if mods == ALT => Some(Shortcut::Back),
            0xff53 if mods == ALT => Some(Shortcut::Forward),
            // The keyboard's own browser keys (XF86Back, XF86Forward), with or without modifiers.
            0x1008_ff26 => Some(Shortcut::Back),
            0x1008_ff27 => Some(Shortcut::Forward),
            0x63 | 0x43 if mods & CTRL != 0 => Some(Shortcut::Copy),
            0x76 | 0x56 if mods & CTRL != 0 => Some(Shortcut::Paste),
            _ => None,
        }
    }

    /// The events for a key press or release.
    pub fn key(&mut self, keysym: u32, pressed: bool) -> Vec<(&'static str, Value)> {
        let Some(key) = key_for(keysym) else { return Vec::new() };
        if key.modifier != 0 {
            if pressed {
                self.modifiers |= key.modifier;
            } else {
                self.modifiers &= !key.modifier;
            }
        }
        let mut params = json!({
            "key": key.key,
            "code": key.code,
            "windowsVirtualKeyCode": key.vk,
            "nativeVirtualKeyCode": key.vk,
            "modifiers": self.modifiers,
        });
        // With Ctrl, Alt or Meta held a key is a shortcut, not text.
        let typing = self.modifiers & (CTRL | ALT | META) == 0;
        let kind = match (&key.text, pressed) {
            (_, false) => "keyUp",
            (Some(text), true) if typing => {
                params["text"] = json!(text);
                params["unmodifiedText"] = json!(text);
                "keyDown"
            }
            (_, true) => "rawKeyDown",
        };
        params["type"] = json!(kind);
        vec![("Input.dispatchKeyEvent", params)]
    }

    /// Releases everything held (after a shortcut the page never saw pressed, or at the end).
    pub fn modifiers(&self) -> u32 {
        self.modifiers
    }

    /// The events for a Guacamole `mouse` instruction.
    pub fn mouse(&mut self, x: i32, y: i32, mask: u32, now: Instant) -> Vec<(&'static str, Value)> {
        let mut events = Vec::new();
        let (old, moved) = (self.mask, (x, y) != self.position);
        self.position = (x, y);
        if moved {
            events.push(self.mouse_event("mouseMoved", "none", old, 0));
        }
        for (bit, name) in [(LEFT, "left"), (MIDDLE, "middle"), (RIGHT, "right")] {
            if mask & bit != old & bit {
                let pressed = mask & bit != 0;
                let after = if pressed { old | bit } else { old & !bit };
                let count = if pressed { self.click_count(bit, now) } else { self.current_count(bit) };
                let kind = if pressed { "mousePressed" } else { "mouseReleased" };
                events.push(self.mouse_event(kind, name, after, count));
                self.mask = after;
            }
        }
        for (bit, delta) in [(WHEEL_UP, -WHEEL_STEP), (WHEEL_DOWN, WHEEL_STEP)] {
            if mask & bit != 0 && old & bit == 0 {
                let mut wheel = self.mouse_event("mouseWheel", "none", mask, 0);
                wheel["deltaX"] = json!(0);
                wheel["deltaY"] = json!(delta);
                events.push(wheel);
            }
        }
        self.mask = mask;
        events.into_iter().map(|params| ("Input.dispatchMouseEvent", params)).collect()
    }

    fn mouse_event(&self, kind: &str, button: &str, mask: u32, click_count: u32) -> Value {
        // CDP's `buttons`: left 1, right 2, middle 4.
        let buttons = (mask & LEFT) | ((mask & RIGHT) >> 1) | ((mask & MIDDLE) << 1);
        json!({
            "type": kind,
            "x": self.position.0,
            "y": self.position.1,
            "button": button,
            "buttons": buttons,
            "clickCount": click_count,
            "modifiers": self.modifiers,
        })
    }

    fn click_count(&mut self, bit: u32, now: Instant) -> u32 {
        let count = match self.last_click {
            Some((at, b, (px, py), count))
                if b == bit
                    && now.duration_since(at) < DOUBLE_CLICK
                    && (px - self.position.0).abs() <= 4
                    && (py - self.position.1).abs() <= 4 =>
            {
                count + 1
            }
            _ => 1,
        };
        self.last_click = Some((now, bit, self.position, count));
        count
    }

    fn current_count(&self, bit: u32) -> u32 {
        match self.last_click {
            Some((_, b, _, count)) if b == bit => count,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms_to_characters() {
        assert_eq!(keysym_char(0x61), Some('a'));
        assert_eq!(keysym_char(0xe9), Some('é'));
        assert_eq!(keysym_char(0x0100_20ac), Some('€'));
        assert_eq!(keysym_char(0x0100_0007), None);
        assert_eq!(keysym_char(0xff0d), None);
        let a = key_for(0x41).unwrap();
        assert_eq!((a.key.as_str(), a.code.as_str(), a.vk, a.text.as_deref()), ("A", "KeyA", 65, Some("A")));
        assert_eq!(key_for(0xffc9).unwrap().key, "F12");
        assert!(key_for(0xfd01).is_none());
    }

    #[test]
    fn typing_and_shortcuts() {
        let mut input = Input::new();
        let down = input.key(0x0100_20ac, true);
        assert_eq!(down[0].1["type"], "keyDown");
        assert_eq!(down[0].1["text"], "€");
        assert_eq!(input.key(0x0100_20ac, false)[0].1["type"], "keyUp");
        input.key(0xffe3, true);
        assert_eq!(input.shortcut(0x76), Some(Shortcut::Paste));
        let ctrl_a = input.key(0x61, true);
        assert_eq!(ctrl_a[0].1["type"], "rawKeyDown");
        assert_eq!(ctrl_a[0].1["modifiers"], CTRL);
        input.key(0xffe3, false);
        input.key(0xffe9, true);
        assert_eq!(input.shortcut(0xff51), Some(Shortcut::Back));
        assert_eq!(input.shortcut(0xff53), Some(Shortcut::Forward));
        input.key(0xffe9, false);
        assert_eq!(input.shortcut(0xff51), None);
        assert_eq!(input.shortcut(0x1008_ff26), Some(Shortcut::Back));
        assert_eq!(input.shortcut(0x1008_ff27), Some(Shortcut::Forward));
        assert_eq!(input.modifiers(), 0);
    }

    #[test]
    fn mouse_clicks_and_wheel() {
        let mut input = Input::new();
        let now = Instant::now();
        let events = input.mouse(10, 20, LEFT, now);
        let kinds: Vec<&str> = events.iter().map(|(_, p)| p["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["mouseMoved", "mousePressed"]);
        assert_eq!(events[1].1["button"], "left");
        assert_eq!(events[1].1["clickCount"], 1);
        assert_eq!(input.mouse(10, 20, 0, now)[0].1["type"], "mouseReleased");
        let again = input.mouse(10, 20, LEFT, now + Duration::from_millis(100));
        assert_eq!(again[0].1["clickCount"], 2, "double click");
        input.mouse(10, 20, 0, now);
        let wheel = input.mouse(10, 20, WHEEL_DOWN, now);
        assert_eq!(wheel[0].1["type"], "mouseWheel");
        assert_eq!(wheel[0].1["deltaY"], WHEEL_STEP);
        assert!(input.mouse(10, 20, 0, now).is_empty());
        let right = input.mouse(10, 20, RIGHT, now);
        assert_eq!((right[0].1["button"].as_str(), right[0].1["buttons"].as_u64()), (Some("right"), Some(2)));
    }
}
