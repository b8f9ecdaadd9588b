//! Verification material as it is fetched for an evidence artifact: cosign simple-signing
//! payloads, DSSE envelopes, Sigstore bundles and artifact configs, each read strictly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::cosign::{EvidenceArtifact, Material};
use portcullis::oci::Reference;
use portcullis_cache::Digest;
use portcullis_policy::AttestationLayer;

const MATERIALS: [Material; 4] = [
    Material::SimpleSigning,
    Material::Dsse,
    Material::Bundle,
    Material::Config,
];

fn reference(bytes: &[u8]) -> Reference {
    Reference {
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        media_type: String::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    for material in MATERIALS {
        let _ = material.check(data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Material::of_layer(text);
    }
    // An artifact config must name the artifact's own layers.
    let artifact = EvidenceArtifact {
        subject: Digest::of(b"subject"),
        blobs: vec![
            (reference(b"{}"), Material::Config),
            (reference(data), Material::Dsse),
        ],
    };
    for (_, material) in &artifact.blobs {
        let _ = artifact.check(*material, data);
    }
    // What the policy reads from an envelope that passed the check: its in-toto statement.
    if Material::Dsse.check(data).is_ok() {
        let layer = AttestationLayer {
            envelope: data.to_vec(),
            ..AttestationLayer::default()
        };
        let _ = layer.statement(&Digest::of(b"subject").to_string());
    }
});
