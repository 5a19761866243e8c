//! Just enough XML writing for a JUnit report: escaping, and elements with attributes.
//!
//! Hand-written rather than a crate (quick-xml and the like): the report is a few fixed
//! elements, and what matters is the escaping of arbitrary text (step logs, messages), which
//! those crates leave to the caller anyway: they escape `<&>"'` but pass through the
//! control characters XML 1.0 forbids, and one NUL or ESC from a step's log makes the whole
//! file unreadable to every CI server.

use std::fmt::Write;

/// What stands in for a character XML 1.0 cannot carry at all.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Whether XML 1.0 allows `c` in a document: `#x9 | #xA | #xD | [#x20-#xD7FF] |
/// [#xE000-#xFFFD] | [#x10000-#x10FFFF]` (surrogates cannot occur in a Rust `char`).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `text` for an element's content. CR is written as a reference, or a parser would
/// turn CRLF into LF; characters XML forbids become U+FFFD.
pub fn escape_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push(REPLACEMENT),
        }
    }
}

/// Escapes `text` for a double-quoted attribute value. Tabs and line breaks are written as
/// references, or a parser would normalise them to spaces and a multi-line message would
/// arrive as one line.
pub fn escape_attr(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push(REPLACEMENT),
        }
    }
}

/// Removes terminal escape sequences (colours, cursor moves: `ESC [ … final`, and other
/// `ESC x` pairs) from a log, so that a coloured line reads as its text rather than as
/// `�[31m`. Other control characters are left for the escaping to replace.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates (0x20-0x3F), then one final byte (0x40-0x7E).
            Some('[') => {
                while chars.next_if(|p| ('\u{20}'..='\u{3f}').contains(p)).is_some() {}
                // A broken sequence (a line break before its final byte) keeps what follows.
                chars.next_if(|p| ('\u{40}'..='\u{7e}').contains(p));
            }
            // OSC (window titles, links): up to BEL or ESC \.
            Some(']') => {
                while let Some(p) = chars.next() {
                    if p == '\u{7}' {
                        break;
                    }
                    if p == '\u{1b}' {
                        chars.next_if_eq(&'\\');
                        break;
                    }
                }
            }
            Some(_) | None => {}
        }
    }
    out
}

/// Writes indented elements into a string. Callers open and close in order; attribute
/// values and text are escaped here, names are the caller's constants.
pub struct Writer {
    out: String,
    depth: usize,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"), depth: 0 }
    }

    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            let _ = write!(self.out, " {key}=\"");
            escape_attr(value, &mut self.out);
            self.out.push('"');
        }
    }

    /// `<name attrs>` on its own line; the children follow, then [`Writer::close`].
    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start(name, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    pub fn close(&mut self, name: &str) {
        self.depth = self.depth.saturating_sub(1);
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        let _ = writeln!(self.out, "</{name}>");
    }

    /// `<name attrs/>`, or `<name attrs>text</name>` when there is text. The text is written
    /// as is (escaped, not indented): it is a log, whose lines must not move.
    pub fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: Option<&str>) {
        self.start(name, attrs);
        match text {
            None => self.out.push_str("/>\n"),
            Some(text) => {
                self.out.push('>');
                escape_text(text, &mut self.out);
                let _ = writeln!(self.out, "</{name}>");
            }
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        let mut out = String::new();
        escape_text(s, &mut out);
        out
    }

    fn attr(s: &str) -> String {
        let mut out = String::new();
        escape_attr(s, &mut out);
        out
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(text("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(text("]]> <![CDATA[x]]>"), "]]&gt; &lt;![CDATA[x]]&gt;");
        assert_eq!(text(r#"say "hi" it's"#), r#"say "hi" it's"#);
        assert_eq!(attr(r#"say "hi" it's <&>"#), "say &quot;hi&quot; it&apos;s &lt;&amp;&gt;");
    }

    #[test]
    fn line_breaks_survive_parsing() {
        assert_eq!(text("one\r\ntwo\tthree\n"), "one&#13;\ntwo\tthree\n");
        assert_eq!(attr("one\r\ntwo\tthree"), "one&#13;&#10;two&#9;three");
    }

    #[test]
    fn forbidden_characters_are_replaced() {
        let nasty = "nul\0 bell\u{7} bs\u{8} vt\u{b} ff\u{c} esc\u{1b} us\u{1f} fffe\u{fffe} ffff\u{ffff}";
        for escaped in [text(nasty), attr(nasty)] {
            assert!(escaped.chars().all(is_xml_char), "{escaped:?}");
            assert_eq!(escaped.matches(REPLACEMENT).count(), 9, "{escaped:?}");
        }
        // Allowed outside the ASCII range: DEL, C1 controls, emoji, the last BMP and plane chars.
        let fine = "del\u{7f} c1\u{85} emoji 🦀 \u{fffd} \u{10ffff} \u{e000}";
        assert_eq!(text(fine), fine);
    }

    #[test]
    fn boundaries_of_the_allowed_ranges() {
        assert!(!is_xml_char('\u{0}'));
        assert!(is_xml_char('\u{9}') && is_xml_char('\u{a}') && is_xml_char('\u{d}'));
        assert!(!is_xml_char('\u{1f}') && is_xml_char('\u{20}'));
        assert!(is_xml_char('\u{d7ff}') && is_xml_char('\u{e000}'));
        assert!(is_xml_char('\u{fffd}') && !is_xml_char('\u{fffe}') && !is_xml_char('\u{ffff}'));
        assert!(is_xml_char('\u{10000}') && is_xml_char('\u{10ffff}'));
    }

    #[test]
    fn terminal_colours_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[1;31merror\u{1b}[0m: boom"), "error: boom");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}text"), "text");
        assert_eq!(strip_ansi("\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\"), "link");
        assert_eq!(strip_ansi("cut at the end \u{1b}["), "cut at the end ");
        assert_eq!(strip_ansi("lone \u{1b}"), "lone ");
        assert_eq!(strip_ansi("broken \u{1b}[31\nnext"), "broken \nnext");
        assert_eq!(strip_ansi("plain\u{7} text"), "plain\u{7} text");
    }

    #[test]
    fn writer_nests_and_escapes() {
        let mut w = Writer::new();
        w.open("a", &[("name", "x\"y")]);
        w.leaf("b", &[], None);
        w.leaf("c", &[("k", "v")], Some("1 < 2\n"));
        w.close("a");
        assert_eq!(
            w.finish(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a name=\"x&quot;y\">\n  <b/>\n  <c k=\"v\">1 &lt; 2\n</c>\n</a>\n"
        );
    }
}
