//! A request target as a client sends it (`/v2/<name>/<endpoint>?<query>`), and image references
//! as `portcullis verify`, `[[mirror]] images` and cosign tags name them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::UpstreamConfig;
use portcullis::handlers::Query;
use portcullis::oci::cosign::signature_tag_subject;
use portcullis::route::{self, Endpoint, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Ok((name, endpoint)) = route::parse_path(path) {
        let _ = route::validate_repo(&name);
        match endpoint {
            Endpoint::Manifest(Reference::Digest(d))
            | Endpoint::Blob(d)
            | Endpoint::Referrers(d) => {
                // A digest read from a path names itself.
                assert_eq!(route::parse_digest(&d.to_string()).ok(), Some(d));
            }
            Endpoint::Manifest(Reference::Tag(t)) => assert!(!t.is_empty() && t.len() <= 128),
            Endpoint::Base | Endpoint::Tags => {}
        }
    }
    let query = Query::parse(query);
    if let Some(ns) = &query.ns {
        // Offline, `?ns=` names a cache namespace with no [[upstream]].
        let _ = UpstreamConfig::offline_placeholder(ns);
    }

    let _ = route::validate_repo(target);
    if let Ok((_, reference)) = route::parse_image_ref(target) {
        let _ = reference.to_string();
    }
    if let Some((name, tag)) = route::split_tag(target) {
        assert_eq!(format!("{name}:{tag}"), target);
        assert!(!tag.contains('/') && !name.is_empty());
    }
    if let Some(subject) = signature_tag_subject(target) {
        assert!(target.contains(subject.to_string().trim_start_matches("sha256:")));
    }
});
