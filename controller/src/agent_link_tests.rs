//! Unit tests of the agent link's error classification.

use super::*;

#[test]
fn a_reset_without_close_is_a_lost_connection_not_a_violation() {
    // A container killed at its deadline or crashed drops the socket like this.
    let reset = tungstenite::Error::Protocol(
        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
    );
    assert_eq!(classify_tungstenite_error(reset), None);
}

#[test]
fn framing_errors_and_bad_text_stay_violations() {
    let bad_frame =
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::NonZeroReservedBits);
    assert!(matches!(
        classify_tungstenite_error(bad_frame),
        Some(ProtocolError::InvalidMessage { .. })
    ));
    let utf8 = tungstenite::Error::Utf8(String::from("bad"));
    assert_eq!(
        classify_tungstenite_error(utf8),
        Some(ProtocolError::InvalidUtf8)
    );
}
