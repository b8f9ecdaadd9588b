//! Trust decisions for portcullis.
//!
//! Given a normalised image name (`registry/repository`), this crate says whether it may be pulled
//! at all (the allow-list and deny-list), and what happens to an allowed name that no verification
//! rule covers (`[policy] default`). It knows nothing of HTTP or storage: the proxy asks, it
//! answers.

mod names;

pub use names::{DefaultAction, NameDecision, NamePolicy, NamePolicyConfig, PolicyError};
