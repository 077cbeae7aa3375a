//! The pure prune decision: one line per situation.

#![allow(clippy::unwrap_used)]

use super::*;

fn image(id: &str, tags: &[&str], labels: &[(&str, &str)]) -> KilnImage {
    KilnImage {
        id: id.to_owned(),
        repo_tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        labels: labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect(),
    }
}

const HASH: (&str, &str) = ("kiln.inputs_hash", "x");

/// A host with two old and one current kiln-minimal, a current and an old
/// kiln-standard with their bases, a current kiln-probe built on an old
/// kiln-minimal, a test's image, an operator image built on kiln-minimal,
/// and an untagged kiln image.
fn host() -> PruneFacts {
    PruneFacts {
        images: vec![
            image("sha256:m1", &["kiln-minimal:aaaa"], &[HASH]),
            image("sha256:m2", &["kiln-minimal:bbbb"], &[HASH]),
            image(
                "sha256:m3",
                &["kiln-minimal:cccc", "kiln-minimal:latest"],
                &[HASH],
            ),
            image("sha256:m4", &["kiln-minimal:dddd"], &[HASH]),
            image("sha256:s1", &["kiln-standard:aaaa"], &[HASH]),
            image(
                "sha256:s2",
                &["kiln-standard:bbbb", "kiln-standard:latest"],
                &[HASH],
            ),
            image("sha256:b1", &["kiln-standard-base:aaaa"], &[HASH]),
            image("sha256:b2", &["kiln-standard-base:bbbb"], &[HASH]),
            image(
                "sha256:p1",
                &["kiln-probe:aaaa", "kiln-probe:latest"],
                &[HASH],
            ),
            image(
                "sha256:t1",
                &["kiln-minimal:tttt"],
                &[HASH, ("kiln.test", "images-fresh-1")],
            ),
            image("sha256:o1", &["acme-tools:1", "kiln-minimal:eeee"], &[HASH]),
            image("sha256:u1", &[], &[HASH]),
        ],
        latest: BTreeMap::from([
            (ImageKind::Minimal, "sha256:m3".to_owned()),
            (ImageKind::Standard, "sha256:s2".to_owned()),
            (ImageKind::Probe, "sha256:p1".to_owned()),
        ]),
        // The probe is built on m4, the current standard on b2.
        ancestors_of_latest: BTreeSet::from(
            [
                "sha256:m3",
                "sha256:s2",
                "sha256:b2",
                "sha256:p1",
                "sha256:m4",
            ]
            .map(str::to_owned),
        ),
        containers_by_image: HashMap::from([(
            "sha256:m2".to_owned(),
            vec!["kiln-0b7f6c2e".to_owned()],
        )]),
    }
}

fn decisions(
    scope: &PruneScope,
    kinds: &[ImageKind],
    facts: &PruneFacts,
) -> Vec<(String, PruneDecision)> {
    plan(scope, kinds, facts)
        .into_iter()
        .map(|(_, image, decision)| (image.id, decision))
        .collect()
}

#[test]
fn operator_prune_of_every_family() {
    use PruneDecision::{Keep, Remove};
    assert_eq!(
        decisions(&PruneScope::operator(), &ImageKind::ALL, &host()),
        vec![
            ("sha256:m1".to_owned(), Remove),
            (
                "sha256:m2".to_owned(),
                Keep(KeepReason::InUse {
                    containers: vec!["kiln-0b7f6c2e".to_owned()]
                })
            ),
            ("sha256:m3".to_owned(), Keep(KeepReason::Latest)),
            ("sha256:m4".to_owned(), Keep(KeepReason::BaseOfLatest)),
            ("sha256:s1".to_owned(), Remove),
            ("sha256:s2".to_owned(), Keep(KeepReason::Latest)),
            ("sha256:b1".to_owned(), Remove),
            ("sha256:b2".to_owned(), Keep(KeepReason::BaseOfLatest)),
            ("sha256:p1".to_owned(), Keep(KeepReason::Latest)),
            // t1 (a test's), o1 (tagged outside Kiln's repositories) and u1
            // (untagged) are never candidates.
        ]
    );
}

#[test]
fn only_the_asked_families() {
    let ids: Vec<String> = decisions(&PruneScope::operator(), &[ImageKind::Standard], &host())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["sha256:s1", "sha256:s2", "sha256:b1", "sha256:b2"]);
}

#[test]
fn a_family_without_latest_keeps_everything() {
    let mut facts = host();
    facts.latest.remove(&ImageKind::Minimal);
    facts.ancestors_of_latest.remove("sha256:m3");
    assert_eq!(
        decisions(&PruneScope::operator(), &[ImageKind::Minimal], &facts),
        vec![
            (
                "sha256:m1".to_owned(),
                PruneDecision::Keep(KeepReason::NoLatest)
            ),
            (
                "sha256:m2".to_owned(),
                PruneDecision::Keep(KeepReason::InUse {
                    containers: vec!["kiln-0b7f6c2e".to_owned()]
                })
            ),
            (
                "sha256:m3".to_owned(),
                PruneDecision::Keep(KeepReason::NoLatest)
            ),
            (
                "sha256:m4".to_owned(),
                PruneDecision::Keep(KeepReason::BaseOfLatest)
            ),
        ]
    );
}

#[test]
fn a_test_scope_sees_only_its_own_images() {
    let scope = PruneScope {
        repository_prefix: "kiln-".to_owned(),
        test_label: Some("images-fresh-1".to_owned()),
    };
    // Only t1 is in scope; with the facts' latest m3 for its family it goes.
    assert_eq!(
        decisions(&scope, &ImageKind::ALL, &host()),
        vec![("sha256:t1".to_owned(), PruneDecision::Remove)]
    );
}

#[test]
fn family_is_decided_by_every_tag() {
    let scope = PruneScope::operator();
    let cases: &[(&[&str], Option<ImageKind>)] = &[
        (&["kiln-minimal:1"], Some(ImageKind::Minimal)),
        (
            &["kiln-minimal:1", "kiln-minimal:latest"],
            Some(ImageKind::Minimal),
        ),
        (&["kiln-standard:1"], Some(ImageKind::Standard)),
        (&["kiln-standard-base:1"], Some(ImageKind::Standard)),
        (&["kiln-probe:1"], Some(ImageKind::Probe)),
        (&["kiln-minimal:1", "kiln-probe:1"], None),
        (&["kiln-minimal:1", "acme:1"], None),
        (&["kiln-minimalist:1"], None),
        (&["registry:5000/kiln-minimal:1"], None),
        (&["localhost:5000/x:1"], None),
        (&[], None),
    ];
    for (tags, expected) in cases {
        assert_eq!(
            scope.family_of(&image("sha256:x", tags, &[HASH])),
            *expected,
            "{tags:?}"
        );
    }
}
