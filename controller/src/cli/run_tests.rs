//! Tests of the live view's pure parts.

use super::printable;

#[test]
fn printable_keeps_plain_text_and_tabs_borrowed() {
    let line = "plain\ttext ünïcode";
    assert!(matches!(printable(line), std::borrow::Cow::Borrowed(_)));
    assert_eq!(printable(line), line);
}

#[test]
fn printable_escapes_terminal_control_sequences() {
    // Clear screen, set the window title, and a carriage return that would
    // overwrite the line: none reaches the terminal as a control.
    assert_eq!(
        printable("\x1b[2Jgone\x1b]0;pwned\x07\rfake"),
        "\\u{1b}[2Jgone\\u{1b}]0;pwned\\u{7}\\u{d}fake"
    );
    assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
}
