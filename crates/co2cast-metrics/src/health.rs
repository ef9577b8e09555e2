//! Readiness: named checks that components register and `/readyz` evaluates. The process is
//! ready when every check passes; `/healthz` only says the process answers.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

static CHECKS: LazyLock<Mutex<BTreeMap<String, Check>>> = LazyLock::new(Default::default);

/// Registers (or replaces) the readiness check `name`.
pub fn set_check(name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
    CHECKS.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), Box::new(check));
}

pub fn remove_check(name: &str) {
    CHECKS.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
}

/// Every check's verdict, by name. A check that panics is a failed check, not a failed
/// endpoint.
pub fn readiness() -> Vec<(String, Result<(), String>)> {
    CHECKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, c)| {
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(c)).unwrap_or_else(|_| Err("the check failed internally (see the log)".into()));
            (n.clone(), verdict)
        })
        .collect()
}
