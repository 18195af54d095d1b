//! The fleet's topology and prices, as an operator writes them (TOML): clouds with regions and
//! zones, edge sites, latency between regions (and from user regions), prices per vCPU-hour and
//! GiB-hour (on-demand and spot), edge power budgets and energy prices.
//!
//! Nodes carry their place as labels (`cloud`, `region`, `zone`; an edge node has
//! `cloud = "edge"` and `region = <site>`; `lifecycle = "spot"` for spot capacity); the lookups
//! here turn a node's labels into its price, power budget and latencies. Parsing is pure (a
//! string in, a checked value or an error with line and column out).
//!
//! ```toml
//! [[cloud]]
//! name = "aws"
//! [[cloud.region]]
//! name = "us-east-1"
//! zones = ["us-east-1a", "us-east-1b"]
//! price = { vcpu_hour = 0.0416, gib_hour = 0.0056, spot_vcpu_hour = 0.0125, spot_gib_hour = 0.0017 }
//!
//! [[edge]]
//! name = "factory-1"
//! power_budget_watts = 60
//! energy_price_kwh = 0.30
//! price = { vcpu_hour = 0.01, gib_hour = 0.002 }
//!
//! [[latency]]
//! from = "us-east-1"
//! to = "factory-1"
//! ms = 35
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::topology::Labels;
use crate::validate::{check_name, ValidationError};

/// The `cloud` label value of edge nodes.
pub const EDGE_CLOUD: &str = "edge";

/// Prices of one region or site, per hour.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// On-demand price per vCPU-hour.
    pub vcpu_hour: f64,
    /// On-demand price per GiB-hour of memory.
    pub gib_hour: f64,
    /// Spot price per vCPU-hour (none: no spot capacity).
    #[serde(default)]
    pub spot_vcpu_hour: Option<f64>,
    /// Spot price per GiB-hour.
    #[serde(default)]
    pub spot_gib_hour: Option<f64>,
}

/// A cloud region.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Its name (unique over the whole fleet, clouds and edge sites together).
    pub name: String,
    /// Its zones.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Its prices.
    #[serde(default)]
    pub price: Price,
}

/// A cloud.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// Its name (`aws`, `gcp`, ...; not `edge`).
    pub name: String,
    /// Its regions.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
}

/// An edge site: small, low-power nodes, often behind NAT.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSite {
    /// Its name; edge nodes carry it as their `region` label.
    pub name: String,
    /// Power the site's nodes may draw for VMs, watts (none: unlimited).
    #[serde(default)]
    pub power_budget_watts: Option<u32>,
    /// Energy price per kWh.
    #[serde(default)]
    pub energy_price_kwh: Option<f64>,
    /// Prices of capacity there.
    #[serde(default)]
    pub price: Price,
}

/// Round-trip latency between two regions or sites (or from a user region), milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// A region, site or user region.
    pub from: String,
    /// A region or site.
    pub to: String,
    /// Milliseconds (symmetric).
    pub ms: u32,
}

/// The whole topology file.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTopology {
    /// Clouds.
    #[serde(default, rename = "cloud")]
    pub clouds: Vec<Cloud>,
    /// Edge sites.
    #[serde(default, rename = "edge")]
    pub edges: Vec<EdgeSite>,
    /// Latencies (symmetric; between regions, sites, and user regions).
    #[serde(default)]
    pub latency: Vec<Latency>,
}

/// A topology file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Not TOML of the expected shape.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// Well formed, but wrong.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn check_price(field: &str, p: &Price) -> Result<(), ValidationError> {
    let all = [
        ("vcpu_hour", Some(p.vcpu_hour)),
        ("gib_hour", Some(p.gib_hour)),
        ("spot_vcpu_hour", p.spot_vcpu_hour),
        ("spot_gib_hour", p.spot_gib_hour),
    ];
    for (name, v) in all {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    format!("{v}: must be a finite price, at least 0"),
                ));
            }
        }
    }
    if p.spot_vcpu_hour.is_some() != p.spot_gib_hour.is_some() {
        return Err(ValidationError::new(
            field,
            "give both spot_vcpu_hour and spot_gib_hour, or neither",
        ));
    }
    Ok(())
}

impl FleetTopology {
    /// Parses and checks a topology file.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let t: FleetTopology = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            TopologyError::Syntax {
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        t.validate()?;
        Ok(t)
    }

    /// Checks names (unique regions and sites over the fleet), prices and latency references.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut places = BTreeSet::new();
        let mut clouds = BTreeSet::new();
        for (i, c) in self.clouds.iter().enumerate() {
            let f = format!("cloud[{i}]");
            check_name(&format!("{f}.name"), &c.name)?;
            if c.name == EDGE_CLOUD {
                return Err(ValidationError::new(
                    format!("{f}.name"),
                    "\"edge\" is reserved for edge sites ([[edge]])",
                ));
            }
            if !clouds.insert(c.name.as_str()) {
                return Err(ValidationError::new(
                    format!("{f}.name"),
                    format!("cloud {:?} given twice", c.name),
                ));
            }
            for (j, r) in c.regions.iter().enumerate() {
                let f = format!("{f}.region[{j}]");
                check_name(&format!("{f}.name"), &r.name)?;
                if !places.insert(r.name.clone()) {
                    return Err(ValidationError::new(
                        format!("{f}.name"),
                        format!("region {:?} given twice", r.name),
                    ));
                }
                for (k, z) in r.zones.iter().enumerate() {
                    check_name(&format!("{f}.zones[{k}]"), z)?;
                }
                check_price(&format!("{f}.price"), &r.price)?;
            }
        }
        for (i, e) in self.edges.iter().enumerate() {
            let f = format!("edge[{i}]");
            check_name(&format!("{f}.name"), &e.name)?;
            if !places.insert(e.name.clone()) {
                return Err(ValidationError::new(
                    format!("{f}.name"),
                    format!("{:?} is already a region or site", e.name),
                ));
            }
            if let Some(p) = e.energy_price_kwh {
                if !p.is_finite() || p < 0.0 {
                    return Err(ValidationError::new(
                        format!("{f}.energy_price_kwh"),
                        format!("{p}: must be a finite price, at least 0"),
                    ));
                }
            }
            check_price(&format!("{f}.price"), &e.price)?;
        }
        for (i, l) in self.latency.iter().enumerate() {
            if !places.contains(&l.to) {
                return Err(ValidationError::new(
                    format!("latency[{i}].to"),
                    format!("{:?} is not a region or edge site of this file", l.to),
                ));
            }
            check_name(&format!("latency[{i}].from"), &l.from)?;
        }
        Ok(())
    }

    /// Every region and site name.
    pub fn places(&self) -> impl Iterator<Item = &str> {
        self.clouds
            .iter()
            .flat_map(|c| c.regions.iter().map(|r| r.name.as_str()))
            .chain(self.edges.iter().map(|e| e.name.as_str()))
    }

    /// The price per hour of a node with these labels (`region`, `lifecycle=spot`), as
    /// (per vCPU, per GiB); none when the node's region is not in the file.
    pub fn hourly_price(&self, labels: &Labels) -> Option<(f64, f64)> {
        let region = labels.get("region")?;
        let spot = labels.get("lifecycle").is_some_and(|l| l == "spot");
        let price = self
            .clouds
            .iter()
            .flat_map(|c| c.regions.iter())
            .find(|r| &r.name == region)
            .map(|r| r.price)
            .or_else(|| {
                self.edges
                    .iter()
                    .find(|e| &e.name == region)
                    .map(|e| e.price)
            })?;
        Some(match (spot, price.spot_vcpu_hour, price.spot_gib_hour) {
            (true, Some(v), Some(g)) => (v, g),
            _ => (price.vcpu_hour, price.gib_hour),
        })
    }

    /// The edge site a node with these labels is at, if any.
    pub fn edge_site(&self, labels: &Labels) -> Option<&EdgeSite> {
        if labels.get("cloud").map(String::as_str) != Some(EDGE_CLOUD) {
            return None;
        }
        let region = labels.get("region")?;
        self.edges.iter().find(|e| &e.name == region)
    }

    /// The latency table, both directions, plus zero from each place to itself.
    pub fn latency_table(&self) -> BTreeMap<(String, String), u32> {
        let mut t = BTreeMap::new();
        for p in self.places() {
            t.insert((p.to_owned(), p.to_owned()), 0);
        }
        for l in &self.latency {
            t.insert((l.from.clone(), l.to.clone()), l.ms);
            t.entry((l.to.clone(), l.from.clone())).or_insert(l.ms);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[cloud]]
name = "aws"
[[cloud.region]]
name = "us-east-1"
zones = ["us-east-1a", "us-east-1b"]
price = { vcpu_hour = 0.04, gib_hour = 0.005, spot_vcpu_hour = 0.012, spot_gib_hour = 0.0015 }

[[cloud]]
name = "gcp"
[[cloud.region]]
name = "europe-west1"
price = { vcpu_hour = 0.035, gib_hour = 0.0047 }

[[edge]]
name = "factory-1"
power_budget_watts = 60
energy_price_kwh = 0.3
price = { vcpu_hour = 0.01, gib_hour = 0.002 }

[[latency]]
from = "us-east-1"
to = "europe-west1"
ms = 80

[[latency]]
from = "users-paris"
to = "europe-west1"
ms = 9
"#;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_and_looks_up_prices_sites_and_latency() {
        let t = FleetTopology::parse(SAMPLE).unwrap();
        assert_eq!(t.places().count(), 3);
        let aws = labels(&[("cloud", "aws"), ("region", "us-east-1")]);
        assert_eq!(t.hourly_price(&aws), Some((0.04, 0.005)));
        let spot = labels(&[("region", "us-east-1"), ("lifecycle", "spot")]);
        assert_eq!(t.hourly_price(&spot), Some((0.012, 0.0015)));
        // No spot price in the region: on-demand.
        let gspot = labels(&[("region", "europe-west1"), ("lifecycle", "spot")]);
        assert_eq!(t.hourly_price(&gspot), Some((0.035, 0.0047)));
        assert_eq!(t.hourly_price(&labels(&[("region", "mars")])), None);
        let edge = labels(&[("cloud", "edge"), ("region", "factory-1")]);
        assert_eq!(t.edge_site(&edge).unwrap().power_budget_watts, Some(60));
        assert!(t.edge_site(&aws).is_none());
        let lat = t.latency_table();
        assert_eq!(lat[&("europe-west1".into(), "us-east-1".into())], 80);
        assert_eq!(lat[&("users-paris".into(), "europe-west1".into())], 9);
        assert_eq!(lat[&("factory-1".into(), "factory-1".into())], 0);
    }

    #[test]
    fn the_documented_example_parses() {
        let t = FleetTopology::parse(include_str!("../../../docs/topology.example.toml")).unwrap();
        assert_eq!(t.clouds.len(), 2);
        assert_eq!(t.edges[0].power_budget_watts, Some(60));
    }

    #[test]
    fn errors_give_line_and_column_or_the_field() {
        let err = FleetTopology::parse("[[cloud]]\nname = \"aws\"\nregoin = 3\n").unwrap_err();
        match &err {
            TopologyError::Syntax { line, column, .. } => {
                assert_eq!((*line, *column), (3, 1), "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("regoin"), "{err}");
        let bad = SAMPLE.replace("ms = 80", "ms = -1");
        let want = SAMPLE.lines().position(|l| l == "ms = 80").unwrap() + 1;
        match FleetTopology::parse(&bad) {
            Err(TopologyError::Syntax { line, .. }) => assert_eq!(line, want),
            other => panic!("{other:?}"),
        }
        let field = |text: &str| match FleetTopology::parse(text) {
            Err(TopologyError::Invalid(v)) => v.field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(&SAMPLE.replace("vcpu_hour = 0.035", "vcpu_hour = -0.035")),
            "cloud[1].region[0].price.vcpu_hour"
        );
        assert_eq!(
            field(&SAMPLE.replace("to = \"europe-west1\"\nms = 9", "to = \"nowhere\"\nms = 9")),
            "latency[1].to"
        );
        assert_eq!(
            field(&SAMPLE.replace("name = \"factory-1\"", "name = \"us-east-1\"")),
            "edge[0].name"
        );
        assert_eq!(
            field(&SAMPLE.replace("name = \"gcp\"", "name = \"edge\"")),
            "cloud[1].name"
        );
    }
}
