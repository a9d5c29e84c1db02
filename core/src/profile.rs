//! Build profiles: the cargo profiles a pipeline may be built in. Each is a
//! profile of the build root's workspace; a pipeline names one when it is
//! submitted (`kiln submit --profile`), or gets the farm's (`--profile`).

/// The known profiles: cargo's own `dev` (unoptimized, with debug assertions) and
/// `release` (optimized).
pub const PROFILES: [&str; 2] = ["dev", "release"];

/// A profile no member builds in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown build profile {name:?}: the known profiles are {}; name one of them (kiln submit --profile NAME), or leave it out for the farm's", PROFILES.join(", "))]
pub struct UnknownProfile {
    pub name: String,
}

/// `name` if it is a known profile.
pub fn check(name: &str) -> Result<&str, UnknownProfile> {
    PROFILES
        .iter()
        .copied()
        .find(|p| *p == name)
        .ok_or_else(|| UnknownProfile { name: name.chars().take(64).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_profile_is_refused_with_the_known_ones() {
        assert_eq!(check("dev"), Ok("dev"));
        assert_eq!(check("release"), Ok("release"));
        let refused = check("turbo").unwrap_err().to_string();
        assert!(refused.contains("\"turbo\"") && refused.contains("dev, release"), "{refused}");
        let long = check(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(long.len() < 400, "a hostile name is cut: {}", long.len());
    }
}
