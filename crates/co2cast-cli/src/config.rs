//! Layered settings for `co2cast run`: built-in defaults, then a TOML file (`--config`), then
//! environment variables `CO2CAST__<SECTION>__<KEY>` (e.g. `CO2CAST__PROCESSOR__BROKERS`), then
//! command-line flags. Unknown keys are errors, so a typo cannot be silently ignored.

use co2cast_pipeline::ProcessorConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub processor: ProcessorConfig,
}

pub fn load(file: Option<&Path>) -> Result<RunConfig, String> {
    let mut fig = Figment::from(Serialized::defaults(RunConfig::default()));
    if let Some(f) = file {
        if !f.is_file() {
            return Err(format!("config file {} does not exist or is not a file", f.display()));
        }
        fig = fig.merge(Toml::file(f));
    }
    fig = fig.merge(Env::prefixed("CO2CAST__").split("__"));
    fig.extract().map_err(|e| {
        let where_ = file.map(|f| format!(" ({})", f.display())).unwrap_or_default();
        format!("configuration{where_}: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("co2cast-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[processor]\nbrokers = \"kafka:9092\"\ncheckpoint_every_messages = 7\n").unwrap();
        let c = load(Some(&good)).unwrap();
        assert_eq!(c.processor.brokers, "kafka:9092");
        assert_eq!(c.processor.checkpoint_every_messages, 7);
        assert_eq!(c.processor.ensemble_members, ProcessorConfig::default().ensemble_members);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[processor]\ncheckpoint_every_mesages = 7\n").unwrap();
        let e = load(Some(&bad)).unwrap_err();
        assert!(e.contains("checkpoint_every_mesages") && e.contains("bad.toml"), "{e}");
        // The shipped pipeline file is exactly the defaults.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/processor.toml");
        assert_eq!(load(Some(&shipped)).unwrap(), RunConfig::default());
    }
}
