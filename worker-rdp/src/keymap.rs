//! X11 keysyms (what Guacamole clients send) → RDP scancodes for the server's keyboard layout
//! (`server-layout`), like guacd's keymaps: a character is sent as the key that types it on that
//! layout, with Shift or AltGr pressed or released around it as the character needs. Characters the
//! layout has no key for go as Unicode key events.
//!
//! Sans-IO: [`Keyboard::key`] returns the `ironrdp_input` operations to send.

use std::collections::HashMap;

use ironrdp_input::{Operation, Scancode};

/// The server keyboard layouts we have maps for (guacd's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    EnUs,
    DeDe,
    FrFr,
}

impl Layout {
    pub fn from_name(name: &str) -> Option<Layout> {
        match name.trim() {
            "en-us-qwerty" => Some(Layout::EnUs),
            "de-de-qwertz" => Some(Layout::DeDe),
            "fr-fr-azerty" => Some(Layout::FrFr),
            _ => None,
        }
    }

    /// The Windows keyboard layout identifier announced in the client core data.
    pub fn id(self) -> u32 {
        match self {
            Layout::EnUs => 0x0409,
            Layout::DeDe => 0x0407,
            Layout::FrFr => 0x040C,
        }
    }

    /// Per key (in [`CHAR_KEYS`] order): the character without modifier and with Shift. `\0` marks
    /// a key that types nothing we map (or a dead key).
    fn rows(self) -> [&'static str; 2] {
        match self {
            Layout::EnUs => [
                "`1234567890-=qwertyuiop[]\\asdfghjkl;'zxcvbnm,./\0",
                "~!@#$%^&*()_+QWERTYUIOP{}|ASDFGHJKL:\"ZXCVBNM<>?\0",
            ],
            Layout::DeDe => [
                "\u{0}1234567890ß\0qwertzuiopü+#asdfghjklöäyxcvbnm,.-<",
                "°!\"§$%&/()=?\0QWERTZUIOPÜ*'ASDFGHJKLÖÄYXCVBNM;:_>",
            ],
            Layout::FrFr => [
                "²&é\"'(-è_çà)=azertyuiop\0$*qsdfghjklmùwxcvbn,;:!<",
                "\u{0}1234567890°+AZERTYUIOP\0£µQSDFGHJKLM%WXCVBN?./§>",
            ],
        }
    }

    /// Characters typed with AltGr: (key, character).
    fn altgr(self) -> &'static [(u16, char)] {
        match self {
            Layout::EnUs => &[],
            Layout::DeDe => &[
                (0x03, '²'),
                (0x04, '³'),
                (0x08, '{'),
                (0x09, '['),
                (0x0A, ']'),
                (0x0B, '}'),
                (0x0C, '\\'),
                (0x10, '@'),
                (0x12, '€'),
                (0x1B, '~'),
                (0x32, 'µ'),
                (0x56, '|'),
            ],
            Layout::FrFr => &[
                (0x04, '#'),
                (0x05, '{'),
                (0x06, '['),
                (0x07, '|'),
                (0x09, '\\'),
                (0x0A, '^'),
                (0x0B, '@'),
                (0x0C, ']'),
                (0x0D, '}'),
                (0x12, '€'),
                (0x1B, '¤'),
            ],
        }
    }
}

/// Scancodes of the character keys, in the order of [`Layout::rows`]: the number row, the three
/// letter rows (with the key right of them), and the ISO key left of the bottom row.
const CHAR_KEYS: [u16; 48] = [
    0x29, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, // number row
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x2B, // top letter row
    0x1E, 0x1F, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // home row
    0x2C, 0x2D, 0x2E, 0x2F, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, // bottom row
    0x56, // ISO 102nd key
];

const SHIFT_L: u16 = 0x2A;
const SHIFT_R: u16 = 0x36;
/// Right Alt, which is AltGr on layouts that have one.
const ALT_GR: u16 = 0xE038;

/// Keys that are the same on every layout.
fn function_key(keysym: u32) -> Option<u16> {
    Some(match keysym {
        0xff08 => 0x0E,                                    // BackSpace
        0xff09 | 0xfe20 => 0x0F,                           // Tab, ISO_Left_Tab
        0xff0d => 0x1C,                                    // Return
        0xff13 => 0x45,                                    // Pause (without its Ctrl prefix)
        0xff14 => 0x46,                                    // Scroll_Lock
        0xff1b => 0x01,                                    // Escape
        0xff50 => 0xE047,                                  // Home
        0xff51 => 0xE04B,                                  // Left
        0xff52 => 0xE048,                                  // Up
        0xff53 => 0xE04D,                                  // Right
        0xff54 => 0xE050,                                  // Down
        0xff55 => 0xE049,                                  // Page_Up
        0xff56 => 0xE051,                                  // Page_Down
        0xff57 => 0xE04F,                                  // End
        0xff61 => 0xE037,                                  // Print
        0xff63 => 0xE052,                                  // Insert
        0xff67 => 0xE05D,                                  // Menu
        0xff7f => 0x45,                                    // Num_Lock
        0xff8d => 0xE01C,                                  // KP_Enter
        0xffaa => 0x37,                                    // KP_Multiply
        0xffab => 0x4E,                                    // KP_Add
        0xffad => 0x4A,                                    // KP_Subtract
        0xffae | 0xff9f => 0x53,                           // KP_Decimal, KP_Delete
        0xffaf => 0xE035,                                  // KP_Divide
        0xffb0 | 0xff9e => 0x52,                           // KP_0, KP_Insert
        0xffb1 | 0xff9c => 0x4F,                           // KP_1, KP_End
        0xffb2 | 0xff99 => 0x50,                           // KP_2, KP_Down
        0xffb3 | 0xff9b => 0x51,                           // KP_3, KP_Page_Down
        0xffb4 | 0xff96 => 0x4B,                           // KP_4, KP_Left
        0xffb5 | 0xff9d => 0x4C,                           // KP_5, KP_Begin
        0xffb6 | 0xff98 => 0x4D,                           // KP_6, KP_Right
        0xffb7 | 0xff95 => 0x47,                           // KP_7, KP_Home
        0xffb8 | 0xff97 => 0x48,                           // KP_8, KP_Up
        0xffb9 | 0xff9a => 0x49,                           // KP_9, KP_Page_Up
        k @ 0xffbe..=0xffc7 => 0x3B + (k - 0xffbe) as u16, // F1–F10
        0xffc8 => 0x57,                                    // F11
        0xffc9 => 0x58,                                    // F12
        0xffe1 => SHIFT_L,                                 // Shift_L
        0xffe2 => SHIFT_R,                                 // Shift_R
        0xffe3 => 0x1D,                                    // Control_L
        0xffe4 => 0xE01D,                                  // Control_R
        0xffe5 => 0x3A,                                    // Caps_Lock
        0xffe7 | 0xffeb => 0xE05B,                         // Meta_L, Super_L
        0xffe8 | 0xffec => 0xE05C,                         // Meta_R, Super_R
        0xffe9 => 0x38,                                    // Alt_L
        0xffea | 0xfe03 => ALT_GR,                         // Alt_R, ISO_Level3_Shift (AltGr)
        0xffff => 0xE053,                                  // Delete
        _ => return None,
    })
}

/// The character a keysym types, if it is a character keysym.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0100..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        0x20ac => Some('€'),
        _ => None,
    }
}

/// How to type a character: its key and the Shift/AltGr state it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CharKey {
    scancode: u16,
    shift: bool,
    altgr: bool,
}

fn char_key(layout: Layout, c: char) -> Option<CharKey> {
    if c == ' ' {
        return Some(CharKey { scancode: 0x39, shift: false, altgr: false });
    }
    if c == '\0' {
        return None;
    }
    for (level, row) in layout.rows().iter().enumerate() {
        if let Some(index) = row.chars().position(|k| k == c) {
            return Some(CharKey { scancode: *CHAR_KEYS.get(index)?, shift: level == 1, altgr: false });
        }
    }
    layout.altgr().iter().find(|(_, k)| *k == c).map(|(code, _)| CharKey { scancode: *code, shift: false, altgr: true })
}

fn scancode(code: u16) -> Scancode {
    Scancode::from_u16(code)
}

/// Keyboard state of one session: which modifiers the user holds and what each pressed keysym sent.
#[derive(Debug)]
pub struct Keyboard {
    layout: Layout,
    shift_held: Vec<u16>,
    altgr_held: bool,
    /// keysym → the operations that release what its press sent.
    pressed: HashMap<u32, Vec<Operation>>,
}

impl Keyboard {
    pub fn new(layout: Layout) -> Keyboard {
        Keyboard { layout, shift_held: Vec::new(), altgr_held: false, pressed: HashMap::new() }
    }

    /// The operations for one Guacamole `key` instruction (empty for an unknown keysym).
    pub fn key(&mut self, keysym: u32, pressed: bool) -> Vec<Operation> {
        if !pressed {
            self.forget_modifier(keysym);
            return self.pressed.remove(&keysym).unwrap_or_default();
        }
        if let Some(previous) = self.pressed.get(&keysym) {
            // Auto-repeat: press the same key again, without re-doing the modifiers.
            return previous
                .iter()
                .filter_map(|op| match op {
                    Operation::KeyReleased(code) => Some(Operation::KeyPressed(*code)),
                    Operation::UnicodeKeyReleased(c) => Some(Operation::UnicodeKeyPressed(*c)),
                    _ => None,
                })
                .take(1)
                .collect();
        }
        let (press, release) = self.translate(keysym);
        if !release.is_empty() {
            self.pressed.insert(keysym, release);
        }
        press
    }

    fn translate(&mut self, keysym: u32) -> (Vec<Operation>, Vec<Operation>) {
        if let Some(code) = function_key(keysym) {
            match code {
                SHIFT_L | SHIFT_R => self.shift_held.push(code),
                ALT_GR => self.altgr_held = true,
                _ => {}
            }
            return (vec![Operation::KeyPressed(scancode(code))], vec![Operation::KeyReleased(scancode(code))]);
        }
        let Some(c) = keysym_char(keysym) else {
            tracing::debug!(keysym = format_args!("{keysym:#x}"), "No scancode for keysym; ignored");
            return (Vec::new(), Vec::new());
        };
        let Some(key) = char_key(self.layout, c) else {
            return (vec![Operation::UnicodeKeyPressed(c)], vec![Operation::UnicodeKeyReleased(c)]);
        };
        let mut before = Vec::new();
        let mut after = Vec::new();
        let shift_down = !self.shift_held.is_empty();
        if key.shift && !shift_down {
            before.push(Operation::KeyPressed(scancode(SHIFT_L)));
            after.push(Operation::KeyReleased(scancode(SHIFT_L)));
        } else if !key.shift && shift_down && c != ' ' {
            for code in &self.shift_held {
                before.push(Operation::KeyReleased(scancode(*code)));
                after.push(Operation::KeyPressed(scancode(*code)));
            }
        }
        if key.altgr && !self.altgr_held {
            before.push(Operation::KeyPressed(scancode(ALT_GR)));
            after.push(Operation::KeyReleased(scancode(ALT_GR)));
        } else if !key.altgr && self.altgr_held {
            before.push(Operation::KeyReleased(scancode(ALT_GR)));
            after.push(Operation::KeyPressed(scancode(ALT_GR)));
        }
        let mut press = before;
        press.push(Operation::KeyPressed(scancode(key.scancode)));
        press.extend(after);
        (press, vec![Operation::KeyReleased(scancode(key.scancode))])
    }

    /// A modifier key was released.
    fn forget_modifier(&mut self, keysym: u32) {
        match function_key(keysym) {
            Some(code @ (SHIFT_L | SHIFT_R)) => self.shift_held.retain(|c| *c != code),
            Some(ALT_GR) => self.altgr_held = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(ops: &[Operation]) -> Vec<(bool, u16)> {
        ops.iter()
            .map(|op| match op {
                Operation::KeyPressed(s) => (true, s.as_u16()),
                Operation::KeyReleased(s) => (false, s.as_u16()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn rows_line_up_with_the_keys() {
        for layout in [Layout::EnUs, Layout::DeDe, Layout::FrFr] {
            for row in layout.rows() {
                assert_eq!(row.chars().count(), CHAR_KEYS.len(), "{layout:?}: {row:?}");
            }
        }
    }

    #[test]
    fn us_letters_digits_and_shifted_symbols() {
        let mut kb = Keyboard::new(Layout::EnUs);
        assert_eq!(codes(&kb.key('a' as u32, true)), [(true, 0x1E)]);
        assert_eq!(codes(&kb.key('a' as u32, false)), [(false, 0x1E)]);
        // '!' needs Shift: pressed around the key.
        assert_eq!(codes(&kb.key('!' as u32, true)), [(true, 0x2A), (true, 0x02), (false, 0x2A)]);
        assert_eq!(codes(&kb.key('!' as u32, false)), [(false, 0x02)]);
        // With Shift held, 'A' goes as is.
        assert_eq!(codes(&kb.key(0xffe1, true)), [(true, 0x2A)]);
        assert_eq!(codes(&kb.key('A' as u32, true)), [(true, 0x1E)]);
        assert_eq!(codes(&kb.key('A' as u32, false)), [(false, 0x1E)]);
        assert_eq!(codes(&kb.key(0xffe1, false)), [(false, 0x2A)]);
        assert_eq!(codes(&kb.key(0xff0d, true)), [(true, 0x1C)]);
        assert_eq!(codes(&kb.key(0xff51, true)), [(true, 0xE04B)]);
        assert_eq!(codes(&kb.key(' ' as u32, true)), [(true, 0x39)]);
    }

    #[test]
    fn german_and_french_keys() {
        let mut de = Keyboard::new(Layout::DeDe);
        assert_eq!(codes(&de.key('z' as u32, true)), [(true, 0x15)]);
        assert_eq!(codes(&de.key('y' as u32, true)), [(true, 0x2C)]);
        assert_eq!(codes(&de.key('@' as u32, true)), [(true, 0xE038), (true, 0x10), (false, 0xE038)]);
        assert_eq!(codes(&de.key(0xdf, true)), [(true, 0x0C)]); // ß
        assert_eq!(codes(&de.key('|' as u32, true)), [(true, 0xE038), (true, 0x56), (false, 0xE038)]);
        assert_eq!(codes(&de.key(0xb5, true)), [(true, 0xE038), (true, 0x32), (false, 0xE038)]); // µ
        let mut fr = Keyboard::new(Layout::FrFr);
        assert_eq!(codes(&fr.key('a' as u32, true)), [(true, 0x10)]);
        assert_eq!(codes(&fr.key('1' as u32, true)), [(true, 0x2A), (true, 0x02), (false, 0x2A)]);
        assert_eq!(codes(&fr.key('m' as u32, true)), [(true, 0x27)]);
        assert_eq!(codes(&fr.key(0xa4, true)), [(true, 0xE038), (true, 0x1B), (false, 0xE038)]);
        // ¤
    }

    #[test]
    fn unmapped_characters_go_as_unicode() {
        let mut kb = Keyboard::new(Layout::EnUs);
        let press = kb.key(0x0100_20ac + 0x1000, true); // U+30AC
        assert!(matches!(press.as_slice(), [Operation::UnicodeKeyPressed('\u{30ac}')]));
        assert!(kb.key(0x1234_5678, true).is_empty());
    }
}
