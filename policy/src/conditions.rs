//! `[[rule.attestation]] conditions`: CEL expressions over an attestation, evaluated by the `cel`
//! crate. Variables: `predicate` (the statement's predicate), `predicateType` and `subject`.
//! Anything but `true` fails the condition; an evaluation error fails it too, with the
//! expression and the error in the message.

use cel::{Context, Program, Value};

use crate::statement::Statement;

/// A condition that is not CEL.
#[derive(Debug, thiserror::Error)]
#[error("condition {expression:?} is not valid CEL: {source}")]
pub struct ConditionError {
    pub expression: String,
    #[source]
    pub source: cel::ParseErrors,
}

/// A compiled condition, with its source for messages.
pub struct Condition {
    source: String,
    program: Program,
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, ConditionError> {
        let program = Program::compile(source).map_err(|e| ConditionError {
            expression: source.to_owned(),
            source: e,
        })?;
        Ok(Condition {
            source: source.to_owned(),
            program,
        })
    }

    /// Whether `statement` satisfies the condition; `Err` says why not, for the verdict.
    pub fn check(&self, statement: &Statement) -> Result<(), String> {
        let mut ctx = Context::default();
        let bind = |e: cel::SerializationError| {
            format!(
                "condition {:?}: cannot bind the attestation: {e}",
                self.source
            )
        };
        ctx.add_variable("predicate", &statement.predicate)
            .map_err(bind)?;
        ctx.add_variable("predicateType", statement.predicate_type.as_str())
            .map_err(bind)?;
        ctx.add_variable("subject", &statement.subject)
            .map_err(bind)?;
        match self.program.execute(&ctx) {
            Ok(Value::Bool(true)) => Ok(()),
            Ok(Value::Bool(false)) => Err(format!("condition {:?} is false", self.source)),
            Ok(other) => Err(format!(
                "condition {:?} gave {other:?}, not a bool",
                self.source
            )),
            Err(e) => Err(format!("condition {:?} failed: {e}", self.source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::IN_TOTO_PAYLOAD;

    fn slsa() -> Statement {
        let raw = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "x", "digest": {"sha256": "ab"}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {"runDetails": {"builder": {"id": "https://github.com/acme/builder"}},
                          "buildDefinition": {"externalParameters": {"workflow": {"repository": "https://github.com/acme/app"}}}},
        });
        Statement::parse(IN_TOTO_PAYLOAD, raw.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn evaluates_over_the_predicate() {
        let s = slsa();
        let ok = Condition::compile(
            r#"predicate.runDetails.builder.id == "https://github.com/acme/builder""#,
        )
        .unwrap();
        assert!(ok.check(&s).is_ok());
        let prefix = Condition::compile(
            r#"predicate.buildDefinition.externalParameters.workflow.repository.startsWith("https://github.com/acme/")"#,
        )
        .unwrap();
        assert!(prefix.check(&s).is_ok());
        let no = Condition::compile(r#"predicateType == "https://spdx.dev/Document""#).unwrap();
        assert!(no.check(&s).unwrap_err().contains("is false"));
    }

    #[test]
    fn errors_deny_with_the_expression() {
        let s = slsa();
        let missing = Condition::compile("predicate.nope.deeper == 1").unwrap();
        let err = missing.check(&s).unwrap_err();
        assert!(err.contains("predicate.nope.deeper"), "{err}");
        let not_bool = Condition::compile("predicate.runDetails").unwrap();
        assert!(not_bool.check(&s).unwrap_err().contains("not a bool"));
        assert!(Condition::compile("predicate ==").is_err());
    }
}
