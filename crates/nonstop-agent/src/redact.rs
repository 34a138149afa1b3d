//! Redaction: values of variables and fields whose names look secret never leave the process.

use nonstop_model::{Data, Value};

/// Name fragments that mark a secret (matched case-insensitively, anywhere in the name).
pub const DENY_LIST: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "private_key",
];

/// Decides which names are secret.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra: Vec<String>,
}

impl Redactor {
    /// The deny-list plus `extra` patterns (lower-case name fragments).
    pub fn new(extra: Vec<String>) -> Redactor {
        Redactor { extra }
    }

    /// Whether a variable or field called `name` is secret.
    pub fn is_secret(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        DENY_LIST.iter().any(|p| name.contains(p)) || self.extra.iter().any(|p| name.contains(p))
    }

    /// Redacts `value` (named `name`) in place: a secret keeps its type and loses its contents.
    pub fn apply(&self, name: &str, value: &mut Value) {
        if self.is_secret(name) {
            value.value = Data::Null;
            value.variant = None;
            value.redacted = true;
            return;
        }
        match &mut value.value {
            Data::Map(fields) => {
                for (k, v) in fields.iter_mut() {
                    self.apply(k, v);
                }
            }
            Data::List(items) => {
                for v in items.iter_mut() {
                    // Elements carry no names of their own; their fields still do.
                    self.apply("", v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_are_blanked_at_any_depth() {
        let mut user = Value::new(
            "User",
            Data::Map(vec![
                ("name".into(), Value::new("String", Data::Str("ann".into()))),
                (
                    "Password_Hash".into(),
                    Value::new("String", Data::Str("x1".into())),
                ),
            ]),
        );
        let r = Redactor::new(vec!["iban".into()]);
        r.apply("user", &mut user);
        assert_eq!(user.field("name").unwrap().value, Data::Str("ann".into()));
        let pw = user.field("Password_Hash").unwrap();
        assert!(pw.redacted);
        assert_eq!(pw.value, Data::Null);
        assert!(r.is_secret("customer_iban"));
        assert!(!r.is_secret("total"));
    }
}
