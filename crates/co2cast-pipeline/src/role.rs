//! What one `co2cast run` process does in the pipeline (`--role`).

/// `All`: the single process (ingest, every estimate, the lake). The scaled-out pipeline splits
/// it: `Province` members share the provinces through a consumer group and publish their rows
/// and member sums; one `National` member sums those into national rows; one `Lake` writer
/// keeps the Parquet lake from the published rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    All,
    Province,
    National,
    Lake,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::All, Role::Province, Role::National, Role::Lake];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Province => "province",
            Role::National => "national",
            Role::Lake => "lake",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (one of all, province, national, lake)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_reads_back_what_it_writes() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        assert!("provinces".parse::<Role>().is_err());
        assert_eq!(Role::default(), Role::All);
    }
}
