//! Event names stay bounded.

use super::*;

#[test]
fn long_names_are_cut_at_a_char_boundary() {
    assert_eq!(bounded_name("a.txt"), "a.txt");
    let long = "é".repeat(200); // 400 bytes
    let cut = bounded_name(&long);
    assert!(cut.len() <= MAX_ARTIFACT_NAME_BYTES + "…".len());
    assert!(cut.ends_with('…'));
    assert_eq!(cut.chars().filter(|c| *c == 'é').count(), 127);
}
