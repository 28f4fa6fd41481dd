//! The projections by name: one type for the status board, checkpoints and rebuild
//! locks in PostgreSQL, the admin API, the command line and the metrics, instead of the
//! same strings written out in each.

use std::fmt;
use std::str::FromStr;

/// A projection of the log (or, for the lake exporter and the predictor, of a table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectionName {
    /// `current_lot_occupancy` in PostgreSQL.
    Occupancy,
    /// `lot_features_15m` in PostgreSQL.
    Features,
    /// The features' Parquet files in the lake (follows the features table).
    FeaturesLake,
    /// Every event as Parquet in the lake.
    Archive,
    /// The forecasts in `lot_forecasts` (follows the features table).
    Predictor,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 5] = [
        ProjectionName::Occupancy,
        ProjectionName::Features,
        ProjectionName::FeaturesLake,
        ProjectionName::Archive,
        ProjectionName::Predictor,
    ];

    /// The projections `replay` rebuilds from the log.
    pub const REBUILDABLE: [ProjectionName; 3] = [
        ProjectionName::Occupancy,
        ProjectionName::Features,
        ProjectionName::Archive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionName::Occupancy => "occupancy",
            ProjectionName::Features => "features",
            ProjectionName::FeaturesLake => "features-lake",
            ProjectionName::Archive => "archive",
            ProjectionName::Predictor => "predictor",
        }
    }

    /// Whether its checkpoint is a log offset (so its lag is one too).
    pub fn follows_log(self) -> bool {
        Self::REBUILDABLE.contains(&self)
    }

    /// A projection `replay` can rebuild, from its name as a user gives it.
    pub fn rebuildable(name: &str) -> Result<ProjectionName, String> {
        match name.parse::<ProjectionName>() {
            Ok(p) if p.follows_log() => Ok(p),
            _ => Err(format!(
                "unknown projection {name:?} to rebuild (known: {})",
                Self::REBUILDABLE.map(Self::as_str).join(", ")
            )),
        }
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProjectionName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown projection {s:?} (known: {})",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

impl serde::Serialize for ProjectionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_only_log_projections_are_rebuilt() {
        for p in ProjectionName::ALL {
            assert_eq!(p.as_str().parse::<ProjectionName>(), Ok(p));
        }
        assert_eq!(
            ProjectionName::rebuildable("archive"),
            Ok(ProjectionName::Archive)
        );
        let e = ProjectionName::rebuildable("predictor").unwrap_err();
        assert!(e.contains("occupancy, features, archive"), "{e}");
        assert!("nonsense".parse::<ProjectionName>().is_err());
    }
}
