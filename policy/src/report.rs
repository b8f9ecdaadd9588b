//! The full chain of a verdict for people, as `portcullis verify` prints it: the decision and
//! why, who signed, which attestations the image carries, what its provenance says (builder,
//! source repository, commit), and the base image's verdict, recursively.

use std::fmt::Write as _;

use crate::rules::{Decision, Verdict};

impl Verdict {
    /// The multi-line report.
    pub fn report(&self) -> String {
        let mut out = String::new();
        self.write_report(&mut out, "");
        out
    }

    fn write_report(&self, out: &mut String, indent: &str) {
        let decision = match self.decision {
            Decision::Allow => "ALLOW",
            Decision::Warn => "WARN",
            Decision::Deny => "DENY",
        };
        let mut parts = self.message.split(" | ");
        let head = parts.next().unwrap_or_default();
        let _ = writeln!(out, "{indent}{decision}: {head}");
        for line in parts {
            let _ = writeln!(out, "{indent}  {line}");
        }
        let signers: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.authorities.iter().filter(|a| a.accepted))
            .map(|a| format!("{}: {}", a.authority, a.detail))
            .collect();
        if !signers.is_empty() {
            let _ = writeln!(out, "{indent}signed by:");
            for s in signers {
                let _ = writeln!(out, "{indent}  - {s}");
            }
        }
        if !self.attestations.is_empty() {
            let _ = writeln!(out, "{indent}attestations:");
        }
        for a in &self.attestations {
            let _ = writeln!(
                out,
                "{indent}  - {} ({}) signed by {}",
                a.kind, a.predicate_type, a.signer
            );
            if let Some(p) = &a.provenance {
                for (what, value) in [
                    ("builder", &p.builder),
                    ("source", &p.source),
                    ("commit", &p.commit),
                ] {
                    let value = value.as_deref().unwrap_or("(not stated)");
                    let _ = writeln!(out, "{indent}      {what}: {value}");
                }
            }
        }
        if let Some(base) = &self.base {
            let _ = writeln!(out, "{indent}base image:");
            base.write_report(out, &format!("{indent}  "));
        }
    }
}
