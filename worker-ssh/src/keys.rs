//! X11 keysyms (what Guacamole clients send) to the bytes a terminal sends, xterm style.

/// Modifier and mode state needed to translate a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyState {
    pub ctrl: bool,
    pub alt: bool,
    pub shift: bool,
    /// DECCKM: cursor keys send `ESC O x` instead of `ESC [ x`.
    pub application_cursor: bool,
    /// The byte BackSpace sends (`backspace`, default 127).
    pub backspace: u8,
    /// DECKPAM: the application asked for keypad application mode (`ESC =`).
    pub application_keypad: bool,
    /// `func-keys-and-keypad=vt100`: VT100 function keys (also the KP_F1–KP_F4 keysyms) and, in keypad
    /// application mode, VT100 keypad sequences. guacd's default ("esc") sends what an xterm sends.
    pub vt100_keys: bool,
}

/// What a key press asks for besides bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Send these bytes to the remote side.
    Send(Vec<u8>),
    /// Ctrl+Shift+V: paste the client's clipboard (as guacd does).
    Paste,
    /// Shift+PageUp / Shift+PageDown: scroll the view by this many rows (positive: back in history).
    Scroll(i32),
    /// Nothing to do (modifiers, unknown keys).
    None,
}

pub const SHIFT_L: u32 = 0xffe1;
pub const SHIFT_R: u32 = 0xffe2;
pub const CONTROL_L: u32 = 0xffe3;
pub const CONTROL_R: u32 = 0xffe4;
pub const META_L: u32 = 0xffe7;
pub const META_R: u32 = 0xffe8;
pub const ALT_L: u32 = 0xffe9;
pub const ALT_R: u32 = 0xffea;

impl KeyState {
    /// Tracks modifiers; returns true if `keysym` is one.
    pub fn update_modifiers(&mut self, keysym: u32, pressed: bool) -> bool {
        match keysym {
            SHIFT_L | SHIFT_R => self.shift = pressed,
            CONTROL_L | CONTROL_R => self.ctrl = pressed,
            ALT_L | ALT_R | META_L | META_R => self.alt = pressed,
            _ => return false,
        }
        true
    }

    /// Translates a key press.
    pub fn translate(&self, keysym: u32) -> KeyAction {
        let csi = |s: &str| KeyAction::Send(format!("\x1b[{s}").into_bytes());
        let ss3 = |s: &str| KeyAction::Send(format!("\x1bO{s}").into_bytes());
        let cursor = |c: &str| if self.application_cursor { ss3(c) } else { csi(c) };
        let vt100_keypad = self.vt100_keys && self.application_keypad;
        let action = match keysym {
            // VT100 keypad in application mode: digits ESC O p..y, and the keys the VT100 had.
            0xffb0..=0xffb9 if vt100_keypad => ss3(&char::from(b'p' + (keysym - 0xffb0) as u8).to_string()),
            0xffad if vt100_keypad => ss3("m"),
            0xffae if vt100_keypad => ss3("n"),
            // No comma key on PC keypads: `*` sends the VT100's comma, `+` its Enter (as guacd).
            0xffaa if vt100_keypad => ss3("l"),
            0xffab if vt100_keypad => ss3("M"),
            0xff08 => KeyAction::Send(vec![self.backspace]),
            0xff09 => KeyAction::Send(b"\t".to_vec()),
            0xfe20 => csi("Z"), // ISO_Left_Tab (Shift+Tab)
            0xff0d | 0xff8d => KeyAction::Send(b"\r".to_vec()),
            0xff1b => KeyAction::Send(vec![0x1b]),
            0xff50 | 0xff95 => cursor("H"),
            0xff57 | 0xff9c => cursor("F"),
            0xff51 | 0xff96 => cursor("D"),
            0xff52 | 0xff97 => cursor("A"),
            0xff53 | 0xff98 => cursor("C"),
            0xff54 | 0xff99 => cursor("B"),
            0xff55 | 0xff9a if self.shift => KeyAction::Scroll(10),
            0xff56 | 0xff9b if self.shift => KeyAction::Scroll(-10),
            0xff55 | 0xff9a => csi("5~"),
            0xff56 | 0xff9b => csi("6~"),
            0xff63 | 0xff9e => csi("2~"),
            0xffff | 0xff9f => csi("3~"),
            0xffbe | 0xff91 => ss3("P"),
            0xffbf | 0xff92 => ss3("Q"),
            0xffc0 | 0xff93 => ss3("R"),
            0xffc1 | 0xff94 => ss3("S"),
            0xffc2 => csi("15~"),
            0xffc3 => csi("17~"),
            0xffc4 => csi("18~"),
            0xffc5 => csi("19~"),
            0xffc6 => csi("20~"),
            0xffc7 => csi("21~"),
            0xffc8 => csi("23~"),
            0xffc9 => csi("24~"),
            // Keypad digits and operators as their characters.
            0xffaa => KeyAction::Send(b"*".to_vec()),
            0xffab => KeyAction::Send(b"+".to_vec()),
            0xffad => KeyAction::Send(b"-".to_vec()),
            0xffae => KeyAction::Send(b".".to_vec()),
            0xffaf => KeyAction::Send(b"/".to_vec()),
            0xffb0..=0xffb9 => KeyAction::Send(vec![b'0' + (keysym - 0xffb0) as u8]),
            0xff80 => KeyAction::Send(b" ".to_vec()),
            _ => match keysym_char(keysym) {
                Some(c) => return self.character(c),
                None => KeyAction::None,
            },
        };
        match action {
            KeyAction::Send(bytes) if self.alt => KeyAction::Send([&[0x1b][..], &bytes].concat()),
            other => other,
        }
    }

    fn character(&self, c: char) -> KeyAction {
        if self.ctrl && self.shift && c.eq_ignore_ascii_case(&'v') {
            return KeyAction::Paste;
        }
        let mut bytes = Vec::with_capacity(5);
        if self.alt {
            bytes.push(0x1b);
        }
        if self.ctrl {
            let control = match c {
                '@' | ' ' | '2' => Some(0),
                'a'..='z' => Some(c as u8 - b'a' + 1),
                'A'..='Z' => Some(c as u8 - b'A' + 1),
                '[' | '3' => Some(0x1b),
                '\\' | '4' => Some(0x1c),
                ']' | '5' => Some(0x1d),
                '^' | '6' => Some(0x1e),
                '_' | '/' | '7' => Some(0x1f),
                '8' | '?' => Some(0x7f),
                _ => None,
            };
            if let Some(b) = control {
                bytes.push(b);
                return KeyAction::Send(bytes);
            }
        }
        let mut buf = [0u8; 4];
        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        KeyAction::Send(bytes)
    }
}

/// The character a keysym types, if it is a character key.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0000..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> KeyState {
        KeyState { backspace: 127, ..KeyState::default() }
    }

    fn send(s: &KeyState, k: u32) -> Vec<u8> {
        match s.translate(k) {
            KeyAction::Send(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn printable_and_control() {
        let mut s = state();
        assert_eq!(send(&s, 'a' as u32), b"a");
        assert_eq!(send(&s, 0x20ac + 0x0100_0000), "€".as_bytes());
        assert_eq!(send(&s, 0xe9), "é".as_bytes());
        assert_eq!(send(&s, 0xff0d), b"\r");
        assert_eq!(send(&s, 0xff08), b"\x7f");
        s.update_modifiers(CONTROL_L, true);
        assert_eq!(send(&s, 'c' as u32), b"\x03");
        assert_eq!(send(&s, '[' as u32), b"\x1b");
        s.update_modifiers(SHIFT_L, true);
        assert_eq!(s.translate('V' as u32), KeyAction::Paste);
        s.update_modifiers(CONTROL_L, false);
        s.update_modifiers(SHIFT_L, false);
        s.update_modifiers(ALT_L, true);
        assert_eq!(send(&s, 'x' as u32), b"\x1bx");
        assert!(!s.update_modifiers('x' as u32, true));
    }

    #[test]
    fn vt100_function_keys_and_keypad() {
        let mut s = state();
        // Keypad characters in numeric mode, with or without vt100.
        assert_eq!(send(&s, 0xffb5), b"5");
        s.vt100_keys = true;
        assert_eq!(send(&s, 0xffb5), b"5", "numeric keypad mode");
        s.application_keypad = true;
        let keypad: Vec<Vec<u8>> = (0xffb0..=0xffb9).map(|k| send(&s, k)).collect();
        assert_eq!(keypad[0], b"\x1bOp");
        assert_eq!(keypad[9], b"\x1bOy");
        assert_eq!(send(&s, 0xffad), b"\x1bOm");
        assert_eq!(send(&s, 0xffae), b"\x1bOn");
        assert_eq!(send(&s, 0xffaa), b"\x1bOl");
        assert_eq!(send(&s, 0xffab), b"\x1bOM");
        // F1-F4 and KP_F1-KP_F4: SS3 P..S; F5 and up as xterm.
        assert_eq!(send(&s, 0xffbe), b"\x1bOP");
        assert_eq!(send(&s, 0xff94), b"\x1bOS");
        assert_eq!(send(&s, 0xffc2), b"\x1b[15~");
        assert_eq!(send(&s, 0xffc9), b"\x1b[24~");
        // guacd's default ("esc"): application keypad mode does not change the keypad.
        s.vt100_keys = false;
        assert_eq!(send(&s, 0xffb0), b"0");
    }

    #[test]
    fn special_keys() {
        let mut s = state();
        assert_eq!(send(&s, 0xff52), b"\x1b[A");
        assert_eq!(send(&s, 0xffbe), b"\x1bOP");
        assert_eq!(send(&s, 0xffc9), b"\x1b[24~");
        assert_eq!(send(&s, 0xffff), b"\x1b[3~");
        assert_eq!(send(&s, 0xff55), b"\x1b[5~");
        s.application_cursor = true;
        assert_eq!(send(&s, 0xff52), b"\x1bOA");
        s.backspace = 8;
        assert_eq!(send(&s, 0xff08), b"\x08");
        s.shift = true;
        assert_eq!(s.translate(0xff55), KeyAction::Scroll(10));
        assert_eq!(s.translate(SHIFT_L), KeyAction::None);
    }
}
