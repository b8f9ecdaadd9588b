//! The strict manifest reader: manifests and indexes from upstreams and layouts, labelled with
//! each `Content-Type` they may come with; evidence artifacts among what parses; and the strict
//! JSON check and Go key folding underneath.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::cosign::evidence_artifact;
use portcullis::oci::document::{
    is_manifest_type, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use portcullis::oci::strict::{self, Fields};
use portcullis::oci::Document;

const SERVED: [Option<&str>; 6] = [
    None,
    Some(OCI_MANIFEST),
    Some(OCI_INDEX),
    Some(DOCKER_MANIFEST),
    Some(DOCKER_LIST),
    Some("application/json"),
];

/// Field names with the runes Go folds specially (K, S, I) and a map, for the strict check.
const FIELDS: Fields = Fields {
    names: &[
        "kind",
        "schemaVersion",
        "mediaType",
        "layers",
        "annotations",
        "os.version",
    ],
    maps: &["annotations"],
};

const COSIGN_TAG: &str =
    "sha256-0000000000000000000000000000000000000000000000000000000000000000.sig";

fuzz_target!(|data: &[u8]| {
    for served in SERVED {
        let Ok(doc) = Document::parse(data, served) else {
            continue;
        };
        assert!(is_manifest_type(&doc.media_type));
        // A document served with its own media type reads the same.
        let again = Document::parse(data, Some(&doc.media_type));
        assert!(again.is_ok(), "{again:?}");
        let _ = doc.blobs();
        let _ = doc.children();
        let _ = (doc.layers(), doc.config(), doc.all_refs());
        let by_subject = doc.subject().ok().flatten().map(|s| {
            format!(
                "sha256-{}.att",
                s.digest.to_string().trim_start_matches("sha256:")
            )
        });
        for tag in [None, Some(COSIGN_TAG), by_subject.as_deref()] {
            if let Some(artifact) = evidence_artifact(&doc, tag) {
                assert_eq!(artifact.blobs.len(), doc.layers().len() + 1);
                for (_, material) in &artifact.blobs {
                    let _ = artifact.check(*material, data);
                }
            }
        }
    }
    let _ = strict::check(data, FIELDS);
    if let Ok(text) = std::str::from_utf8(data) {
        let folded = strict::go_fold(text);
        assert_eq!(folded.chars().count(), text.chars().count());
    }
});
